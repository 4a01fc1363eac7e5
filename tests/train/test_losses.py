"""The ORPO loss and log1mexp on hand-computed numbers."""

from __future__ import annotations

import math

import torch

from unleak.train.losses import log1mexp, orpo_loss, sequence_logps


def test_orpo_loss_hand_computed():
    """p_chosen = 0.5, p_rejected = 0.25, NLL = 2, beta = 0.1.

    log odds(chosen) = log(0.5 / 0.5) = 0; log odds(rejected) = log(0.25 / 0.75) = -log 3;
    ratio = log 3 = 1.0986; log sigmoid(log 3) = log(3/4) = -0.287682;
    loss = 2 + 0.1 * 0.287682 = 2.0287682.
    """
    out = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), torch.tensor(2.0), beta=0.1)
    assert math.isclose(out.log_odds.item(), math.log(3), rel_tol=1e-6)
    assert math.isclose(out.odds_ratio_loss.item(), -math.log(0.75), rel_tol=1e-6)
    assert math.isclose(out.loss.item(), 2.0287682, rel_tol=1e-6)


def test_orpo_loss_averages_pairs():
    """Two pairs: log odds ratios log 3 and 0 -> ratio loss = (0.287682 + log 2) / 2 = 0.490256."""
    c = torch.tensor([math.log(0.5), math.log(0.3)])
    r = torch.tensor([math.log(0.25), math.log(0.3)])
    out = orpo_loss(c, r, torch.tensor(0.0), beta=1.0)
    assert math.isclose(out.loss.item(), (-math.log(0.75) + math.log(2)) / 2, rel_tol=1e-6)


def test_log1mexp_is_stable_at_both_ends():
    x = torch.tensor([-50.0, -1.0, -1e-3, -1e-10, 0.0], dtype=torch.float64)
    got = log1mexp(x)
    assert got[0].item() == -math.exp(-50)  # naive log(1 - exp(-50)) is exactly 0
    assert math.isclose(got[1].item(), math.log(1 - math.exp(-1)), rel_tol=1e-12)
    assert math.isclose(got[2].item(), math.log(-math.expm1(-1e-3)), rel_tol=1e-9)
    assert math.isfinite(got[3].item()) and math.isfinite(got[4].item())  # clamped, not -inf
    assert torch.isfinite(torch.autograd.functional.jacobian(log1mexp, x)).all()


def test_sequence_logps_scores_only_labelled_next_tokens():
    """Vocab 2, uniform logits except position 1 predicting token 1 with log-prob log(e/(1+e))."""
    logits = torch.zeros(1, 3, 2)
    logits[0, 1] = torch.tensor([0.0, 1.0])
    labels = torch.tensor([[-100, 0, 1]])  # token 0 at t=1 (from t=0), token 1 at t=2 (from t=1)
    total, count = sequence_logps(logits, labels)
    assert count.item() == 2
    assert math.isclose(total.item(), math.log(0.5) + math.log(math.e / (1 + math.e)), rel_tol=1e-6)
