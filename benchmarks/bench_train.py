"""Benchmark: one ORPO step vs one plain LoRA forward+backward on exactly the same tokens; TRL's defaults.

On the embedded default model (fp32 on this CPU), LoRA r16 on all linear
layers, the same collated batch of 2 preference pairs from the synthetic
corpus (rows [chosen, chosen, rejected, rejected]), in one run, alternating:

- plain: `model(input_ids, labels).loss.backward()` + AdamW step;
- orpo: `OrpoTrainer.compute_loss` (one forward, the pure ORPO loss) + backward + AdamW step;
- orpo_shared: the same with each prompt run once and both answers on its KV cache (the default);
- trl: one optimizer step of `trl.experimental.orpo.ORPOTrainer` with its default
  config (bf16, gradient checkpointing as TRL sets them) on the same 2 pairs.

Last line: JSON with `orpo_over_plain` (target <= 1.15), `shared_prompt_speedup` and
`speedup_vs_trl_defaults`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from unleak.config import OrpoSettings
from unleak.models import load_model, load_tokenizer, prepare_default_model
from unleak.train.data import PreferenceCollator, tokenize_pair
from unleak.train.orpo import lora_model, orpo_batch_loss


def make_pairs() -> list[dict]:
    from unleak.corpus.synth import synthesize_corpus
    from unleak.pairs.samples import build_samples

    samples = build_samples(synthesize_corpus(8, seed=0))[:2]
    return [{"prompt": s.messages, "chosen": [{"role": "assistant", "content": "I'd rather not repeat personal "
                                                "details, but here is how you can go about it in general terms."}],
             "rejected": [{"role": "assistant", "content": s.original_answer}]} for s in samples]


def time_ours(repeats: int, pairs: list[dict]) -> dict[str, float]:
    tok = load_tokenizer("default")
    model = lora_model(load_model("default", trainable=True, dtype="fp32"), OrpoSettings())
    model.train()
    rows = [tokenize_pair(p, tok, 2048, 1900) for p in pairs]
    batch = PreferenceCollator(tok.pad_token_id)(rows)
    shared_batch = PreferenceCollator(tok.pad_token_id, share_prompt=True)(rows)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    def plain() -> None:
        model(**batch).loss.backward()

    def orpo() -> None:
        orpo_batch_loss(model, batch, beta=0.1)[0].loss.backward()

    def orpo_shared() -> None:
        orpo_batch_loss(model, shared_batch, beta=0.1)[0].loss.backward()

    fns = (("plain", plain), ("orpo", orpo), ("orpo_shared", orpo_shared))
    times: dict[str, list[float]] = {name: [] for name, _ in fns}
    for name, fn in fns:  # warm-up
        fn()
        opt.zero_grad()
    for _ in range(repeats):
        for name, fn in fns:
            t = time.perf_counter()
            fn()
            opt.step()
            opt.zero_grad()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()} | {"tokens": int(batch["attention_mask"].sum())}


def time_trl(pairs: list[dict]) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    path = prepare_default_model()
    steps: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - self.t)

    from peft import LoraConfig

    with tempfile.TemporaryDirectory() as tmp:
        ds = datasets.Dataset.from_list(pairs)
        cfg = ORPOConfig(output_dir=tmp, max_steps=1, per_device_train_batch_size=2, report_to=[],
                         save_strategy="no", use_cpu=True)
        trainer = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), args=cfg, train_dataset=ds,
                              processing_class=load_tokenizer(str(path)), callbacks=[Timer()],
                              peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.01,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        print(f"TRL defaults: bf16={cfg.bf16} gradient_checkpointing={cfg.gradient_checkpointing}")
        trainer.train()
    return steps[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-trl", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    pairs = make_pairs()
    ours = time_ours(args.repeats, pairs)
    print(f"{ours['tokens']} tokens per step; plain LoRA fwd+bwd {ours['plain']:.2f} s, ORPO {ours['orpo']:.2f} s, "
          f"ORPO with the shared prompt forward {ours['orpo_shared']:.2f} s")
    trl = None if args.skip_trl else time_trl(pairs)
    if trl is not None:
        print(f"TRL ORPOTrainer step with its defaults: {trl:.2f} s")
    print(json.dumps({"bench": "train", "tokens": ours["tokens"], "plain_s": round(ours["plain"], 3),
                      "orpo_s": round(ours["orpo"], 3), "orpo_over_plain": round(ours["orpo"] / ours["plain"], 3),
                      "orpo_shared_s": round(ours["orpo_shared"], 3),
                      "shared_prompt_speedup": round(ours["orpo"] / ours["orpo_shared"], 3),
                      "trl_defaults_s": None if trl is None else round(trl, 2),
                      "speedup_vs_trl_defaults": None if trl is None else round(trl / ours["orpo"], 2)}))


if __name__ == "__main__":
    main()
