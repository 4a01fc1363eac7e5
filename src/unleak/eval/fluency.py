"""Fluency: perplexity of generated answers under a reference (base) model.

High guidance in log space broke the grammar of the original's answers; the
perplexity of the answers, conditioned on their prompts, under the clean base
model measures that. Token-weighted: exp(sum NLL / tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from unleak.train.data import CausalCollator
from unleak.train.losses import sequence_logps


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
