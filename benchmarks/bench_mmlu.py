"""Benchmark: MMLU accuracy and wall time of the default model on the 2,000-question subset.

Runs the stratified, seeded subset of MMLU's test set (embedded, `default_mmlu_file`) in
the `--format` given. letters (letter log-likelihood, batched, the common
header shared through the KV cache): then, side by side on `--compare` other
questions, the same scoring with and without the shared prefix. cloze (each
choice's text, each question prefilled once and its cache repeated per
choice): side by side, whole rows (question + choice) batched with no cache.
Both report the agreement and the speed ratio.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from unleak.config import MC_FORMATS, GuidanceConfig
from unleak.eval.utility import (accuracy_with_se, cloze_continuations, cloze_prompt, format_question,
                                 load_mc_questions, multiple_choice_cloze_scores, multiple_choice_letter_logprobs,
                                 default_mmlu_file)
from unleak.models import load_model, load_tokenizer


@torch.no_grad()
def cloze_whole_rows(model, tok, questions, batch_size: int) -> list[list[float]]:
    """Cloze scores from whole (question + choice) rows, right-padded, no cache: the plain way."""
    rows = []  # (question, ids, start of the choice, characters)
    for i, q in enumerate(questions):
        ctx = tok(cloze_prompt(q), add_special_tokens=False)["input_ids"]
        for text in cloze_continuations(q):
            rows.append((i, ctx + tok(text, add_special_tokens=False)["input_ids"], len(ctx), len(text)))
    out: list[list[float]] = [[] for _ in questions]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        width = max(len(r[1]) for r in chunk)
        ids = torch.tensor([r[1] + [pad] * (width - len(r[1])) for r in chunk])
        mask = torch.tensor([[1] * len(r[1]) + [0] * (width - len(r[1])) for r in chunk])
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for k, (i, seq, start, chars) in enumerate(chunk):
            target = torch.tensor(seq[start:])[:, None]
            out[i].append(logp[k, start - 1:len(seq) - 1].gather(-1, target).sum().item() / chars)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmlu", default=default_mmlu_file() or "../shared/data/mmlu/mmlu_test.jsonl")
    ap.add_argument("--model", default="default")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--compare", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--format", choices=MC_FORMATS, default="letters")
    args = ap.parse_args()
    if not Path(args.mmlu).exists() and not args.mmlu.count("/") == 1:
        sys.exit(f"MMLU file not found: {args.mmlu} (the shared data is needed)")
    tok, model = load_tokenizer(args.model), load_model(args.model)
    questions = load_mc_questions(args.mmlu, limit=args.limit, seed=0)
    prompt = format_question if args.format == "letters" else cloze_prompt
    n_tokens = sum(len(tok(prompt(q), add_special_tokens=False)["input_ids"]) for q in questions)
    result: dict[str, object] = {"model": args.model, "format": args.format, "questions": len(questions),
                                 "threads": torch.get_num_threads(), "prompt_tokens": n_tokens}
    if args.format == "cloze":
        result["choice_tokens"] = sum(len(tok(c, add_special_tokens=False)["input_ids"])
                                      for q in questions for c in cloze_continuations(q))
    t = time.perf_counter()
    if args.format == "letters":
        scores = multiple_choice_letter_logprobs(model, tok, questions, args.batch_size)
    else:
        scores = multiple_choice_cloze_scores(model, tok, questions, [GuidanceConfig(1.0)],
                                              batch_size=args.batch_size)[0]
    result["seconds"] = round(time.perf_counter() - t, 1)
    correct = [max(range(len(s)), key=s.__getitem__) == q["answer"] for s, q in zip(scores, questions)]
    result.update({k: v for k, v in accuracy_with_se(correct).items() if k != "n"})
    sub = load_mc_questions(args.mmlu, limit=args.compare, seed=1)
    if args.format == "cloze":
        t = time.perf_counter()
        plain = cloze_whole_rows(model, tok, sub, args.batch_size)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        ours = multiple_choice_cloze_scores(model, tok, sub, [GuidanceConfig(1.0)], batch_size=args.batch_size,
                                            progress=False)[0]
        ours_s = time.perf_counter() - t
        diff = max(abs(a - b) for x, y in zip(plain, ours) for a, b in zip(x, y))
        result.update({"compare_questions": len(sub), "whole_rows_seconds": round(plain_s, 1),
                       "cache_per_choice_seconds": round(ours_s, 1), "speedup": round(plain_s / ours_s, 3),
                       "max_abs_score_diff": float(f"{diff:.2e}")})
        print(json.dumps(result))
        return
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
