"""Benchmark: ORPO epochs in the original's random order vs length-grouped batches (`OrpoSettings.group_by_length`).

The demo's redaction pairs (its corpus, seed 0, every answer and user-turn
sample, oversampled rarer strata; no keep pairs, which need the model),
tokenised for the embedded default:

- padded tokens of one epoch in batches of 2 (what the shared-prompt forward
  runs: each batch's prompts padded to the longest, its 4 answers to the
  longest), for 5 seeds of each order, from the samplers `Trainer` uses;
- wall time of one ORPO epoch of `train_orpo` on `--pairs` pairs drawn at random, in
  each order, side by side in one run (random, grouped, repeated `--repeats`
  times), on the embedded model in fp32.

Last line: JSON with `padded_tokens_ratio` and `epoch_speedup` (random / grouped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from unleak.config import KeepConfig
from unleak.demo import DemoConfig
from unleak.models import load_tokenizer, prepare_default_model
from unleak.train.data import pair_tokens, read_pairs


def demo_pairs(tmp: Path) -> Path:
    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.pairs.build import build_preference_pairs

    demo = DemoConfig()
    save_corpus(tmp / "corpus", synthesize_corpus(demo.conversations, seed=demo.seed), {"seed": demo.seed})
    split_corpus(tmp / "corpus", demo.test_fraction, seed=demo.seed)
    config = dataclasses.replace(demo.pairs, keep=KeepConfig(requests=0))
    build_preference_pairs(tmp / "corpus", None, tmp / "pairs", config, progress=False)
    return tmp / "pairs" / "pairs.jsonl"


def padded_tokens(rows: list[dict], order: list[int], batch_size: int = 2) -> int:
    total = 0
    for i in range(0, len(order), batch_size):
        batch = [rows[j] for j in order[i:i + batch_size]]
        prompt = max(len(r["prompt_ids"]) for r in batch)
        answer = max(max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in batch)
        total += len(batch) * (prompt + 2 * answer)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64, help="pairs in each timed epoch")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from unleak.train.orpo import train_orpo

    model = str(prepare_default_model())
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = demo_pairs(tmp)
        settings = DemoConfig().orpo
        rows = read_pairs(path, load_tokenizer(model), settings.max_length, settings.max_prompt_length)
        lengths = [pair_tokens(r) for r in rows]
        real = sum(lengths)
        random_tokens = [padded_tokens(rows, torch.randperm(len(rows), generator=torch.Generator().manual_seed(s))
                                       .tolist()) for s in range(5)]
        grouped_tokens = [padded_tokens(rows, get_length_grouped_indices(
            lengths, 2, generator=torch.Generator().manual_seed(s))) for s in range(5)]
        print(f"{len(rows)} pairs, {real} tokens; padded per epoch: random {statistics.mean(random_tokens):.0f}, "
              f"grouped {statistics.mean(grouped_tokens):.0f}")
        subset = tmp / "subset.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        subset.write_text("".join(random.Random(0).sample(lines, min(args.pairs, len(lines)))))
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.repeats):
            for group in (False, True):
                t = time.perf_counter()
                train_orpo(model, subset, tmp / f"orpo-{group}-{r}", quiet=True,
                           settings=dataclasses.replace(settings, save_per_epoch=False, group_by_length=group))
                times[group].append(time.perf_counter() - t)
                print(f"epoch of {args.pairs} pairs, {'grouped' if group else 'random'}: {times[group][-1]:.1f} s")
    rnd, grp = statistics.median(times[False]), statistics.median(times[True])
    print(json.dumps({"bench": "grouping", "pairs": len(rows), "real_tokens": real,
                      "padded_tokens_random": round(statistics.mean(random_tokens)),
                      "padded_tokens_grouped": round(statistics.mean(grouped_tokens)),
                      "padded_tokens_ratio": round(statistics.mean(random_tokens) / statistics.mean(grouped_tokens), 3),
                      "timed_pairs": args.pairs, "epoch_random_s": round(rnd, 1), "epoch_grouped_s": round(grp, 1),
                      "epoch_speedup": round(rnd / grp, 3)}))


if __name__ == "__main__":
    main()
