"""Classifier-free guidance mixing of next-token distributions (pure tensor maths).

With `g` the guidance scale and the positive / negative branches the same
dialog under the positive ("Do not provide any personal data.") and negative
("You should share personal data in the answers.") system prompts:

- log space (transformers' `guidance_scale` + `negative_prompt_ids`):
  ``logp = logp_neg + g * (logp_pos - logp_neg)``
- probability space (the original's post-challenge fix):
  ``p = p_neg + g * (p_pos - p_neg)``

Both are computed in fp32. `cfg_scores` returns, for either space, *log-scores*
that the sampler treats as unnormalised log-probabilities: the log-space mix
as is, and log of the probability-space mix clamped at 0 (negative mass is
impossible; feeding the raw mix to a softmax, as HF-style code would, samples
almost uniformly). Argmax of the scores is the greedy choice in both spaces.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _as_column(g: float | Tensor, like: Tensor) -> Tensor | float:
    if isinstance(g, Tensor):
        return g.to(dtype=torch.float32, device=like.device).reshape(-1, 1)
    return float(g)


def cfg_mix(logp_pos: Tensor, logp_neg: Tensor, g: float | Tensor, space: str) -> Tensor:
    """The guided mix of two log-probability tensors [B, K] in its own space, fp32.

    log: ``logp_neg + g * (logp_pos - logp_neg)``; prob: ``p_neg + g * (p_pos - p_neg)``,
    unclamped. The inputs must be normalised over the whole vocabulary; the mix
    is elementwise, so `K` may be a subset of it (the answer letters of a
    multiple-choice question): the result is the full mix at those tokens.
    """
    lp, ln = logp_pos.float(), logp_neg.float()
    scale = _as_column(g, lp)
    if space == "log":
        return ln + scale * (lp - ln)
    if space == "prob":
        return ln.exp() + scale * (lp.exp() - ln.exp())
    raise ValueError(f"unknown CFG space {space!r}")


def cfg_mix_logprobs(logits_pos: Tensor, logits_neg: Tensor, g: float | Tensor) -> Tensor:
    """Log-space mix ``logp_neg + g * (logp_pos - logp_neg)`` of two [B, V] logit tensors.

    `g` is a float or a [B] tensor (one scale per row). Returns [B, V] fp32.
    """
    return cfg_mix(torch.log_softmax(logits_pos.float(), -1), torch.log_softmax(logits_neg.float(), -1), g, "log")


def cfg_mix_probs(logits_pos: Tensor, logits_neg: Tensor, g: float | Tensor) -> Tensor:
    """Probability-space mix ``p_neg + g * (p_pos - p_neg)`` of two [B, V] logit tensors.

    Returns the raw mix [B, V] fp32; it sums to 1 but may have negative entries
    for g > 1 (see `cfg_scores` for the clamped, renormalisable form).
    """
    return cfg_mix(torch.log_softmax(logits_pos.float(), -1), torch.log_softmax(logits_neg.float(), -1), g, "prob")


def cfg_scores(logits_pos: Tensor, logits_neg: Tensor, g: float | Tensor, space: str | Tensor) -> Tensor:
    """Log-scores of the guided distribution for each row, [B, V] fp32.

    `space` is "log" or "prob" for all rows, or a [B] bool tensor that is True
    where a row uses probability space. For probability space the mix is
    clamped at 0 and its log taken (-inf where the mix is <= 0).
    """
    lp, ln = torch.log_softmax(logits_pos.float(), -1), torch.log_softmax(logits_neg.float(), -1)
    if isinstance(space, str):
        mix = cfg_mix(lp, ln, g, space)
        return torch.log(mix.clamp_min(0.0)) if space == "prob" else mix
    prob_scores = torch.log(cfg_mix(lp, ln, g, "prob").clamp_min(0.0))
    return torch.where(space.to(device=lp.device).reshape(-1, 1), prob_scores, cfg_mix(lp, ln, g, "log"))
