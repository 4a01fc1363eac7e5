"""Benchmark: shared-prefix prefill (`CFGGenerator(share_prefixes=True)`) vs one prefill of every prompt.

The demo's evaluation workload on the demo's corpus (`--conversations` 40,
seed 0, its test split): the extraction attack's prompts in both variants
(as the challenge runs it and with the context's trailing space cut), run
together as `unleak.eval.attack.run_attacks` does, and the test prompts
(`generate_answers`), greedy, on `--model` (default: the embedded model)
unguided (the base and leaky rows) or, with `--adapter`, under the demo's
guidance settings with the adapter (its defended rows). Side by side in one
run after an untimed warm-up, `--repeats` times, the order alternating; the
outputs of both modes are compared.

Last line: JSON with each mode's median seconds, the prompt tokens and the
distinct prefixes among them, `identical` and `speedup` (off / on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--adapter", default=None, help="PEFT adapter: the demo's defended rows (guided), unmerged")
    ap.add_argument("--conversations", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=24)
    ap.add_argument("--attack-limit", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from unleak.config import GuidanceConfig
    from unleak.corpus.store import load_split, save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.decoding import CFGGenerator
    from unleak.demo import DemoConfig, demo_configurations
    from unleak.eval.attack import attack_prompts, run_attacks
    from unleak.eval.leakage import generate_answers
    from unleak.eval.run import EvalSettings
    from unleak.models import load_model, load_tokenizer
    from unleak.pairs.samples import build_samples, limit_samples
    from unleak.decoding.generator import negative_adapter_for

    demo = DemoConfig()
    with tempfile.TemporaryDirectory() as tmp:
        save_corpus(tmp, synthesize_corpus(args.conversations, seed=args.seed), {})
        split_corpus(tmp, demo.test_fraction, seed=args.seed)
        test = load_split(tmp, "test")
    tok = load_tokenizer(args.model)
    model = load_model(args.model, adapter=args.adapter, merge=False)
    attack = EvalSettings().attack
    variants = {"attack": attack, "attack_stripped": dataclasses.replace(attack, strip_trailing_space=True)}
    sets = {v: attack_prompts(test, tok, a)[: args.attack_limit] for v, a in variants.items()}
    samples = limit_samples(build_samples(test), args.test_limit, 0)
    if args.adapter:
        rows = [c for c in demo_configurations(demo, args.model, args.model, Path(tmp)) if c.adapter]
        guidances = [GuidanceConfig(c.guidance_scale, c.cfg_space) for c in rows]
        negatives = [negative_adapter_for(c.negative, args.adapter) for c in rows]
    else:
        guidances, negatives = [GuidanceConfig(1.0)], [None]
    served = bool(args.adapter)

    def run(share: bool) -> tuple[float, list]:
        gen = CFGGenerator(model, tok, max_batch_requests=EvalSettings().batch_size, share_prefixes=share)
        t = time.perf_counter()
        outs = run_attacks(gen, sets, guidances, attack, served, negative_adapters=negatives)
        answers = generate_answers(gen, samples, guidances, demo.leakage_max_new_tokens, negative_adapters=negatives)
        return time.perf_counter() - t, [outs, [[a.token_ids for a in conf] for conf in answers]]

    run(True)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for i in range(args.repeats):
        for share in ((True, False) if i % 2 == 0 else (False, True)):
            seconds, outputs[share] = run(share)
            times[share].append(seconds)
    prompt_ids = [tok(p.text, add_special_tokens=False)["input_ids"] for ps in sets.values() for p in ps]
    prefixes = {tuple(ids[:k]) for ids in prompt_ids for k in range(1, len(ids) + 1)}
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(json.dumps({
        "model": args.model, "adapter": args.adapter, "settings": len(guidances), "threads": torch.get_num_threads(),
        "attack_prompts": len(prompt_ids), "test_prompts": len(samples),
        "attack_prompt_tokens": sum(map(len, prompt_ids)), "attack_distinct_prefixes": len(prefixes),
        "shared_s": round(on, 1), "separate_s": round(off, 1), "runs_s": {str(k): v for k, v in times.items()},
        "identical": outputs[True] == outputs[False], "speedup": round(off / on, 3),
    }))


if __name__ == "__main__":
    main()
