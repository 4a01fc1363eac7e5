"""Benchmark: MMLU accuracy and wall time of the default model on the 2,000-question subset.

Runs the stratified, seeded subset of `../shared/data/mmlu/mmlu_test.jsonl`
(letter log-likelihood, batched, the common header shared through the KV cache),
then, side by side on the first `--compare` questions, the same scoring with
and without the shared prefix (agreement and speed ratio).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from unleak.eval.utility import (accuracy_with_se, format_question, load_mc_questions,
                                 multiple_choice_letter_logprobs, shared_mmlu_file)
from unleak.models import load_model, load_tokenizer

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmlu", default=shared_mmlu_file() or "../shared/data/mmlu/mmlu_test.jsonl")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--compare", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if not Path(args.mmlu).exists() and not args.mmlu.count("/") == 1:
        sys.exit(f"MMLU file not found: {args.mmlu} (the shared data is needed)")
    tok, model = load_tokenizer(args.model), load_model(args.model)
    questions = load_mc_questions(args.mmlu, limit=args.limit, seed=0)
    n_tokens = sum(len(tok(format_question(q), add_special_tokens=False)["input_ids"]) for q in questions)
    result: dict[str, object] = {"model": args.model, "questions": len(questions), "threads": torch.get_num_threads(),
                                 "prompt_tokens": n_tokens}
    t = time.perf_counter()
    scores = multiple_choice_letter_logprobs(model, tok, questions, args.batch_size)
    result["seconds"] = round(time.perf_counter() - t, 1)
    correct = [max(range(len(s)), key=s.__getitem__) == q["answer"] for s, q in zip(scores, questions)]
    result.update({k: v for k, v in accuracy_with_se(correct).items() if k != "n"})
    sub = load_mc_questions(args.mmlu, limit=args.compare, seed=1)
    timings = {}
    for share in (False, True):
        t = time.perf_counter()
        timings[share] = (multiple_choice_letter_logprobs(model, tok, sub, args.batch_size, progress=False,
                                                          share_prefix=share), time.perf_counter() - t)
    diff = max(abs(a - b) for x, y in zip(timings[False][0], timings[True][0]) for a, b in zip(x, y))
    result.update({"compare_questions": len(sub), "whole_prompt_seconds": round(timings[False][1], 1),
                   "shared_prefix_seconds": round(timings[True][1], 1),
                   "shared_prefix_speedup": round(timings[False][1] / timings[True][1], 3),
                   "max_abs_logprob_diff": float(f"{diff:.2e}")})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
