"""Fluency: perplexity of generated answers under a reference (base) model.

High guidance in log space broke the grammar of the original's answers; the
perplexity of the answers, conditioned on their prompts, under the clean base
model measures that. Token-weighted: exp(sum NLL / tokens).

Perplexity alone rewards degenerate text: an answer that repeats itself
("a party in 2025. I'm planning a party in 2025.") is very predictable. The
repetition rate (seq-rep-n of Welleck et al., 2019: the share of an answer's
n-grams that already occurred earlier in it) is reported next to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from unleak.train.data import CausalCollator
from unleak.train.losses import sequence_logps

#: n of the repetition rate (seq-rep-n); 4 as in Welleck et al.
REPETITION_N = 4


@torch.no_grad()
def answer_perplexity(model: Any, tokenizer: Any, prompts: list[list[int]], answers: list[list[int]],
                      batch_size: int = 8) -> dict[str, float]:
    """Perplexity of `answers` (token ids) after `prompts` (token ids) under `model`."""
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = CausalCollator(pad)
    device = next(model.parameters()).device
    rows = [{"input_ids": p + a, "labels": [-100] * len(p) + a} for p, a in zip(prompts, answers) if a]
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums, counts = sequence_logps(logits, batch["labels"])
        total += -sums.sum().item()
        count += int(counts.sum().item())
    if not count:
        return {"perplexity": float("nan"), "tokens": 0}
    return {"perplexity": round(math.exp(total / count), 3), "tokens": count}


def repetition_counts(tokens: Sequence[int], n: int = REPETITION_N) -> tuple[int, int]:
    """(repeated n-grams, n-grams) of one sequence: an n-gram is repeated when it occurred earlier in it."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams)), len(grams)


def repetition_rate(answers: Sequence[Sequence[int]], n: int = REPETITION_N) -> float | None:
    """seq-rep-n over `answers` (token ids), n-gram-weighted; None when no answer has n tokens."""
    counts = [repetition_counts(a, n) for a in answers]
    total = sum(c for _, c in counts)
    return round(sum(r for r, _ in counts) / total, 4) if total else None


def answer_fluency(model: Any, tokenizer: Any, prompts: list[list[int]], answers: list[list[int]],
                   batch_size: int = 8, n: int = REPETITION_N) -> dict[str, Any]:
    """Perplexity under `model` and the repetition rate (seq-rep-`n`) of `answers`."""
    return {**answer_perplexity(model, tokenizer, prompts, answers, batch_size),
            "repetition": repetition_rate(answers, n), "repetition_n": n}
