"""Benchmark: batched CFG decoding vs plain greedy decoding and transformers' guidance_scale.

On the embedded default model, greedy, 64 new tokens (EOS ignored so every run
decodes the same number of tokens), the same prompts, all in one run:

- seconds per request for plain greedy decoding (transformers `generate`),
  for this generator at g = 1 and g = 3 (both spaces), and for transformers'
  `guidance_scale=3` with `negative_prompt_ids`;
- tokens/s for 8 concurrent requests through this generator (g = 3) vs the
  same 8 one by one through transformers' `guidance_scale`.

Last line: one JSON object with `ratio_vs_plain` (ours g=3 / plain greedy),
`speedup_vs_hf` (HF guidance_scale time / ours g=3) and `batch8_speedup`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unleak.chat import render_prompt, with_system_prompt
from unleak.config import GuidanceConfig, PromptConfig, SamplingConfig
from unleak.decoding import CFGGenerator, GenerationRequest
from unleak.models import load_model, load_tokenizer

PROMPTS = [
    "My name is Laura Chen and I live at 14 Birch Lane, Portland. Write a note to my new neighbours.",
    "I'm moving from Austin to Denver next month with my husband Mark. What should I pack first?",
    "Can you summarise what a mortgage pre-approval is, in two sentences?",
    "My doctor, Dr. Patel at St. Mary's, said my blood pressure is high. What diet changes help?",
    "Draft a short email to my boss, Janet Reyes, asking for Friday off.",
    "What are three tips for a job interview at a bank?",
    "I was born on 2 March 1988 in Glasgow. Write a two-line bio for me.",
    "Explain the difference between a Roth IRA and a traditional IRA.",
]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    model = load_model(args.model, device=args.device)
    tok = load_tokenizer(args.model)
    device = next(model.parameters()).device
    prompts = PromptConfig()
    n = args.new_tokens
    gen = CFGGenerator(model, tok)
    gen.eos_ids = set()

    def msgs(p):
        return [{"role": "user", "content": p}]

    def hf_inputs(p, system):
        text = render_prompt(tok, with_system_prompt(msgs(p), system))
        return tok(text, return_tensors="pt", add_special_tokens=False).to(device)

    def hf_plain(p):
        with torch.inference_mode():
            model.generate(**hf_inputs(p, prompts.positive), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=tok.pad_token_id)

    def hf_cfg(p):
        neg = hf_inputs(p, prompts.negative)
        with torch.inference_mode():
            model.generate(**hf_inputs(p, prompts.positive), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           guidance_scale=3.0, negative_prompt_ids=neg["input_ids"],
                           negative_prompt_attention_mask=neg["attention_mask"], pad_token_id=tok.pad_token_id)

    def ours(ps, g, space="prob"):
        gen.generate([GenerationRequest(messages=msgs(p), guidance=GuidanceConfig(g, space),
                                        sampling=SamplingConfig(max_new_tokens=n)) for p in ps])

    ours([PROMPTS[0]], 3.0)  # warm-up
    hf_plain(PROMPTS[0])
    p = PROMPTS[0]
    single = {
        "hf_plain_s": timed(lambda: hf_plain(p), args.repeats),
        "ours_g1_s": timed(lambda: ours([p], 1.0), args.repeats),
        "ours_g3_prob_s": timed(lambda: ours([p], 3.0, "prob"), args.repeats),
        "ours_g3_log_s": timed(lambda: ours([p], 3.0, "log"), args.repeats),
        "hf_guidance_s": timed(lambda: hf_cfg(p), args.repeats),
    }
    batch_ours = timed(lambda: ours(PROMPTS, 3.0), 1)
    batch_hf = timed(lambda: [hf_cfg(q) for q in PROMPTS], 1)
    tokens = n * len(PROMPTS)
    result = {
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "new_tokens": n,
        **{k: round(v, 3) for k, v in single.items()},
        "batch8_ours_tok_s": round(tokens / batch_ours, 2),
        "batch8_hf_one_by_one_tok_s": round(tokens / batch_hf, 2),
        "ratio_vs_plain": round(single["ours_g3_prob_s"] / single["hf_plain_s"], 3),
        "ratio_vs_ours_g1": round(single["ours_g3_prob_s"] / single["ours_g1_s"], 3),
        "hf_guidance_ratio_vs_plain": round(single["hf_guidance_s"] / single["hf_plain_s"], 3),
        "speedup_vs_hf": round(single["hf_guidance_s"] / single["ours_g3_prob_s"], 3),
        "batch8_speedup": round(batch_hf / batch_ours, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
