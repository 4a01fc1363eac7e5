"""Fluency: perplexity of generated answers under a reference (base) model.

High guidance in log space broke the grammar of the original's answers; the
perplexity of the answers, conditioned on their prompts, under the clean base
model measures that. Token-weighted: exp(sum NLL / tokens). The answers of
several configurations to the same prompts share the prompts' forward pass.
The answers are read in the reference model's own tokens: the generator's ids
when it shares the reference's vocabulary, else the answer's text tokenised
again (`reference_token_ids`; a Llama-3.1 model's ids mean nothing to SmolLM2).

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

from unleak.models import output_cache

#: n of the repetition rate (seq-rep-n); 4 as in Welleck et al.
REPETITION_N = 4


@torch.no_grad()
def answer_perplexities(model: Any, tokenizer: Any, prompts: list[list[int]],
                        answer_sets: Sequence[Sequence[Sequence[int]]], batch_size: int = 8
                        ) -> list[dict[str, float]]:
    """Perplexity of each set of answers (token ids, one per prompt) after `prompts` under `model`.

    Every batch of prompts is prefilled once (left-padded, KV cache); each
    answer set then runs from that cache (right-padded answer tokens, positions
    continuing each prompt), and the cache is cropped back to the prompts.
    """
    from transformers import DynamicCache

    for answers in answer_sets:
        if len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    totals = [0.0] * len(answer_sets)
    counts = [0] * len(answer_sets)
    for i in range(0, len(prompts), batch_size):
        rows = range(i, min(i + batch_size, len(prompts)))
        if not any(answers[r] for answers in answer_sets for r in rows):
            continue
        width = max(len(prompts[r]) for r in rows)
        ids = torch.tensor([[pad] * (width - len(prompts[r])) + list(prompts[r]) for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[r])) + [1] * len(prompts[r]) for r in rows], device=device)
        lengths = mask.sum(-1, keepdim=True)

        def prefill() -> tuple[Any, torch.Tensor]:
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                        cache=DynamicCache(config=getattr(model, "config", None)), use_cache=True, logits_to_keep=1)
            return output_cache(out), out.logits[:, -1:].float()  # the last prompt position predicts token 1

        cache, first = prefill()
        for k, answers in enumerate(answer_sets):
            longest = max(len(answers[r]) for r in rows)
            if not longest:
                continue
            if cache is None:
                cache, first = prefill()
            tokens = torch.tensor([list(answers[r]) + [pad] * (longest - len(answers[r])) for r in rows],
                                  device=device)
            scored = torch.tensor([[1] * len(answers[r]) + [0] * (longest - len(answers[r])) for r in rows],
                                  device=device)
            logits = model(input_ids=tokens, attention_mask=torch.cat([mask, scored], -1),
                           position_ids=lengths + torch.arange(longest, device=device), cache=cache,
                           use_cache=True).logits
            try:
                cache.crop(-longest)
            except RuntimeError:  # a sliding-window layer past its window cannot roll back: prefill again
                cache = None
            logits = torch.cat([first, logits[:, :-1].float()], 1)
            token_logps = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            totals[k] -= (token_logps * scored).sum().item()
            counts[k] += int(scored.sum().item())
    return [{"perplexity": round(math.exp(t / n), 3), "tokens": n} if n else {"perplexity": float("nan"), "tokens": 0}
            for t, n in zip(totals, counts)]


def answer_perplexity(model: Any, tokenizer: Any, prompts: list[list[int]], answers: list[list[int]],
                      batch_size: int = 8) -> dict[str, float]:
    """Perplexity of `answers` (token ids) after `prompts` (token ids) under `model`."""
    return answer_perplexities(model, tokenizer, prompts, [answers], batch_size)[0]


def repetition_counts(tokens: Sequence[int], n: int = REPETITION_N) -> tuple[int, int]:
    """(repeated n-grams, n-grams) of one sequence: an n-gram is repeated when it occurred earlier in it."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams)), len(grams)


def repetition_rate(answers: Sequence[Sequence[int]], n: int = REPETITION_N) -> float | None:
    """seq-rep-n over `answers` (token ids), n-gram-weighted; None when no answer has n tokens."""
    counts = [repetition_counts(a, n) for a in answers]
    total = sum(c for _, c in counts)
    return round(sum(r for r, _ in counts) / total, 4) if total else None


def reference_token_ids(answers: Sequence[Any], tokenizer: Any, reference_tokenizer: Any) -> list[list[int]]:
    """The token ids of `answers` (`GenerationResult`s of a generator with `tokenizer`) as the reference model
    reads them: their own ids when both tokenizers have the same vocabulary, else their text tokenised by
    `reference_tokenizer`."""
    if tokenizer is reference_tokenizer or tokenizer.get_vocab() == reference_tokenizer.get_vocab():
        return [list(a.token_ids) for a in answers]
    return [reference_tokenizer(a.text, add_special_tokens=False)["input_ids"] for a in answers]


def answer_fluency(model: Any, tokenizer: Any, prompts: list[list[int]],
                   answer_sets: Sequence[Sequence[Sequence[int]]], batch_size: int = 8, n: int = REPETITION_N
                   ) -> list[dict[str, Any]]:
    """Perplexity under `model` and the repetition rate (seq-rep-`n`) of each set of answers to `prompts`."""
    return [{**ppl, "repetition": repetition_rate(answers, n), "repetition_n": n}
            for ppl, answers in zip(answer_perplexities(model, tokenizer, prompts, answer_sets, batch_size),
                                    answer_sets)]
