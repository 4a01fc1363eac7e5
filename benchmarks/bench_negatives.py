"""Benchmark: the demo's `-vs-base` rows evaluated in the method's pass vs in a pass of their own.

The demo's ten defended rows (g = 1; g = 2, 3, 5 in probability and log
space with the method's negative branch; g = 2, 3, 5 in probability space
guided away from the model without the adapter) on the demo's corpus (40
conversations, seed 0), evaluated by `run_evaluation`:

- together: one group, the adapter unmerged and switched per row (what the
  demo does);
- apart: the method's seven rows with the adapter merged, then the three
  `-vs-base` rows unmerged (two passes).

Side by side in one run after an untimed warm-up (`--repeats` times, the
order alternating), each into a fresh output directory, so nothing is cached;
a mode's time is the seconds its groups report (model load to fluency). The model is `--leaky`
(default: the embedded model) with `--adapter` (default: a LoRA of the
demo's shape with small random weights; the speed does not depend on them,
but how long guided rows agree does: pass the demo's own adapter for its
numbers). Sizes default to a part of the demo's (`--test-limit`,
`--attack-limit`, `--mmlu-limit`; MMLU only when ../shared is present).

Last line: JSON with the seconds of each mode and `speedup` (apart / together).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

import torch


def random_adapter(model: str, out: Path) -> str:
    """The demo's LoRA (`unleak.train.orpo.lora_model` with its ORPO settings) with small random weights."""
    from unleak.demo import DemoConfig
    from unleak.models import load_model
    from unleak.train.orpo import lora_model

    torch.manual_seed(0)
    peft = lora_model(load_model(model), DemoConfig().orpo)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.01)
    peft.save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leaky", default=None, help="model (default: the embedded model)")
    ap.add_argument("--adapter", default=None, help="PEFT adapter (default: random, the demo's LoRA shape)")
    ap.add_argument("--test-limit", type=int, default=8)
    ap.add_argument("--attack-limit", type=int, default=16)
    ap.add_argument("--mmlu-limit", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus
    from unleak.demo import DemoConfig, demo_configurations
    from unleak.eval.run import EvalSettings, run_evaluation
    from unleak.eval.utility import default_mmlu_file
    from unleak.models import prepare_default_model

    demo = DemoConfig()
    leaky = args.leaky or str(prepare_default_model())
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        corpus = save_corpus(tmp / "corpus", synthesize_corpus(demo.conversations, seed=demo.seed),
                             {"seed": demo.seed})
        split_corpus(corpus, demo.test_fraction, seed=demo.seed)
        orpo = tmp / "orpo"
        adapter = args.adapter or random_adapter(leaky, orpo / demo.variant / "adapter")
        rows = [r for r in demo_configurations(demo, leaky, leaky, orpo) if r.adapter is not None]
        rows = [dataclasses.replace(r, adapter=adapter) for r in rows]
        mmlu = default_mmlu_file()
        settings = EvalSettings(leakage_max_new_tokens=demo.leakage_max_new_tokens, test_limit=args.test_limit,
                                attack_limit=args.attack_limit, mmlu=mmlu, mmlu_limit=args.mmlu_limit,
                                reference_template=None)
        method = [r for r in rows if r.negative == "adapter"]
        vs_base = [r for r in rows if r.negative != "adapter"]
        # untimed warm-up: the model files, spaCy and the reference model paged in before either mode runs
        run_evaluation(corpus, rows[:1], tmp / "warm-up", dataclasses.replace(settings, test_limit=1,
                                                                             attack_limit=1, mmlu_limit=1),
                       progress=False)
        times: dict[str, list[float]] = {"apart": [], "together": []}
        for rep in range(args.repeats):
            # alternate which mode goes first; a mode's time is its groups' (model load to fluency; not the
            # detectors' set-up, which one `run_evaluation` call of the old code did once for both groups)
            for mode in (("apart", "together") if rep % 2 == 0 else ("together", "apart")):
                passes = [method, vs_base] if mode == "apart" else [rows]
                results = [run_evaluation(corpus, confs, tmp / f"{mode}-{rep}-{i}", settings, progress=False)
                           for i, confs in enumerate(passes)]
                times[mode].append(sum(r[0]["seconds"] for r in results))
                print(f"{mode}: {times[mode][-1]:.1f} s", flush=True)
    apart, together = statistics.median(times["apart"]), statistics.median(times["together"])
    print(json.dumps({"bench": "negatives", "rows": len(rows), "vs_base_rows": len(vs_base),
                      "test_prompts": args.test_limit, "attack_prompts": args.attack_limit,
                      "mmlu_questions": args.mmlu_limit if mmlu else 0, "adapter": args.adapter or "random",
                      "apart_s": round(apart, 1), "together_s": round(together, 1),
                      "speedup": round(apart / together, 3)}))


if __name__ == "__main__":
    main()
