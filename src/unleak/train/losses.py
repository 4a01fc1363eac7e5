"""The ORPO loss as a pure tensor function (Hong et al. 2024; section 2 of the method).

    log_odds(y) = log p(y) - log(1 - p(y)),  p(y) = exp(mean token log-prob of y)
    L = NLL(chosen) - beta * mean(log sigmoid(log_odds(chosen) - log_odds(rejected)))

`log1mexp` computes log(1 - exp(x)) stably for x < 0 (Mächler 2012): the
expm1 branch near 0, the log1p branch far from it. A response whose mean
log-prob rounds to 0 is clamped just below it instead of giving -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_LOG_HALF = -0.6931471805599453


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate across the whole range."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class OrpoLossOutput:
    loss: torch.Tensor
    nll: torch.Tensor
    odds_ratio_loss: torch.Tensor  # -mean(log sigmoid(log odds ratio)), before beta
    log_odds: torch.Tensor  # per pair
    chosen_logps: torch.Tensor  # mean token log-prob per chosen answer
    rejected_logps: torch.Tensor


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float) -> OrpoLossOutput:
    """ORPO from the mean token log-probs of chosen/rejected answers and the NLL of the chosen ones."""
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    ratio_loss = -F.logsigmoid(log_odds).mean()
    return OrpoLossOutput(chosen_nll + beta * ratio_loss, chosen_nll, ratio_loss, log_odds,
                          chosen_logps, rejected_logps)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token log-probs per row and the token count, for next-token `logits` (B, T, V) and `labels` (B, T).

    `labels[b, t]` is the token at position t (ignore_index where not scored);
    position t is predicted by logits at t - 1.
    """
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != ignore_index
    token_logps = -F.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(~mask, 0),
                                   reduction="none")
    return (token_logps * mask).sum(-1), mask.sum(-1)
