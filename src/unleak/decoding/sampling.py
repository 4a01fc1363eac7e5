"""Choosing the next token from log-scores (pure tensor maths).

Before that, `ban_repeated_ngrams` (transformers' `no_repeat_ngram_size`)
may forbid the tokens that would repeat an n-gram of a row's own output.

Order, per row: greedy if temperature == 0 (argmax of the scores); otherwise
scores / temperature -> top-k (k == 0: off) -> top-p (nucleus, 1.0: off) ->
softmax -> one multinomial draw with that row's own `torch.Generator`, so a
request's seed gives the same tokens whatever else is in the batch. This is
the order transformers applies temperature, top-k and top-p in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def filter_top_k(scores: Tensor, top_k: Tensor) -> Tensor:
    """Set all but the `top_k[i]` highest scores of row i to -inf (k == 0 keeps all)."""
    vocab = scores.shape[-1]
    k = torch.where(top_k <= 0, torch.full_like(top_k, vocab), top_k.clamp(max=vocab)).to(scores.device)
    sorted_scores = torch.sort(scores, dim=-1, descending=True).values
    kth = sorted_scores.gather(-1, (k - 1).reshape(-1, 1))
    return scores.masked_fill(scores < kth, float("-inf"))


def filter_top_p(scores: Tensor, top_p: Tensor) -> Tensor:
    """Nucleus filtering: keep the smallest set of top tokens whose mass reaches `top_p[i]`.

    The most likely token is always kept. top_p == 1 keeps every token with
    non-zero probability.
    """
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = mass_before >= top_p.to(scores.device).reshape(-1, 1)
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def ban_repeated_ngrams(scores: Tensor, histories: Sequence[Sequence[int]], sizes: Sequence[int]) -> Tensor:
    """Set to -inf, in row i, every token that would complete an n-gram (n = `sizes[i]`) already in `histories[i]`.

    With history h and n, the banned tokens are h[j + n - 1] for every j where
    h[j : j + n - 1] equals the last n - 1 tokens of h; n <= 0 bans nothing.
    Returns a new tensor; `scores` is left as it is.
    """
    out = scores.clone()
    for row, (hist, n) in enumerate(zip(histories, sizes)):
        if n <= 0 or len(hist) < n:
            continue
        tail = tuple(hist[len(hist) - n + 1:]) if n > 1 else ()
        banned = {hist[j + n - 1] for j in range(len(hist) - n + 1) if tuple(hist[j:j + n - 1]) == tail}
        if banned:
            out[row, sorted(banned)] = float("-inf")
    return out


def sample_next_token(
    scores: Tensor,
    temperature: Tensor | float = 0.0,
    top_k: Tensor | int = 0,
    top_p: Tensor | float = 1.0,
    generators: Sequence[torch.Generator | None] | None = None,
) -> Tensor:
    """Pick one token per row of `scores` [B, V] (unnormalised log-probabilities).

    Settings are scalars or [B] tensors. Returns a [B] long tensor.
    """
    batch = scores.shape[0]
    temperature = torch.as_tensor(temperature, dtype=torch.float32).expand(batch).to(scores.device)
    top_k = torch.as_tensor(top_k, dtype=torch.long).expand(batch)
    top_p = torch.as_tensor(top_p, dtype=torch.float32).expand(batch)
    greedy = scores.argmax(dim=-1)
    sampled_rows = (temperature > 0).nonzero().flatten().tolist()
    if not sampled_rows:
        return greedy
    rows = torch.tensor(sampled_rows, device=scores.device)
    s = scores[rows].float() / temperature[rows].reshape(-1, 1)
    s = filter_top_k(s, top_k[rows.cpu()])
    s = filter_top_p(s, top_p[rows.cpu()])
    probs = torch.softmax(s, dim=-1)
    out = greedy.clone()
    for j, row in enumerate(sampled_rows):
        gen = generators[row] if generators is not None else None
        out[row] = torch.multinomial(probs[j], 1, generator=gen).squeeze(0)
    return out
