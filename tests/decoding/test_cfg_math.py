"""CFG mixing and next-token sampling on hand-computed numbers."""

import math

import pytest
import torch

from unleak.decoding.cfg import cfg_mix, cfg_mix_logprobs, cfg_mix_probs, cfg_scores
from unleak.decoding.sampling import ban_repeated_ngrams, filter_top_k, filter_top_p, sample_next_token

# p_pos = [.5, .25, .25], p_neg = [.25, .5, .25] (logits are log-probs, so softmax is exact)
POS = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
NEG = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))


def test_log_space_mix_by_hand():
    """g = 3: logp = logp_neg + 3 (logp_pos - logp_neg).

    token 0: ln .25 + 3 ln 2 = ln 2;  token 1: ln .5 + 3 ln .5 = ln 1/16;  token 2: ln .25.
    """
    mix = cfg_mix_logprobs(POS, NEG, 3.0)
    assert torch.allclose(mix.exp(), torch.tensor([[2.0, 0.0625, 0.25]]), atol=1e-6)


def test_prob_space_mix_by_hand():
    """g = 3: p = p_neg + 3 (p_pos - p_neg) = [.25 + .75, .5 - .75, .25] = [1, -.25, .25].

    It sums to 1 but has a negative entry; clamped at 0 and renormalised: [.8, 0, .2].
    """
    mix = cfg_mix_probs(POS, NEG, 3.0)
    assert torch.allclose(mix, torch.tensor([[1.0, -0.25, 0.25]]), atol=1e-6)
    scores = cfg_scores(POS, NEG, 3.0, "prob")
    assert scores[0, 1] == float("-inf")
    assert torch.allclose(torch.softmax(scores, -1), torch.tensor([[0.8, 0.0, 0.2]]), atol=1e-6)


def test_scale_one_is_the_positive_branch_in_both_spaces():
    for space in ("log", "prob"):
        assert torch.allclose(torch.softmax(cfg_scores(POS, NEG, 1.0, space), -1), POS.exp(), atol=1e-6)


def test_per_row_scale_and_space():
    pos, neg = POS.repeat(2, 1), NEG.repeat(2, 1)
    scores = cfg_scores(pos, neg, torch.tensor([3.0, 1.0]), torch.tensor([True, False]))
    assert torch.allclose(torch.softmax(scores[0], -1), torch.tensor([0.8, 0.0, 0.2]), atol=1e-6)
    assert torch.allclose(torch.softmax(scores[1], -1), POS[0].exp(), atol=1e-6)


def test_mix_is_computed_in_fp32_from_bf16_logits():
    out = cfg_mix_logprobs(POS.bfloat16(), NEG.bfloat16(), 3.0)
    assert out.dtype == torch.float32


def test_greedy_is_argmax():
    scores = torch.tensor([[0.1, 2.0, -1.0], [5.0, 0.0, 0.0]])
    assert sample_next_token(scores).tolist() == [1, 0]


def test_top_k_keeps_the_k_best_per_row():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    out = filter_top_k(scores, torch.tensor([2, 0]))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert not torch.isinf(out[1]).any()  # k = 0: off


@pytest.mark.parametrize("top_p, kept", [(0.7, [True, True, False, False]), (0.5, [True, False, False, False]),
                                         (1.0, [True, True, True, True]), (0.81, [True, True, True, False])])
def test_top_p_keeps_smallest_set_reaching_mass(top_p, kept):
    """probs .5 .3 .15 .05: mass before each token is 0, .5, .8, .95; a token stays while that is < top_p."""
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = filter_top_p(scores, torch.tensor([top_p]))
    assert (~torch.isinf(out[0])).tolist() == kept


def test_temperature_sharpens_and_flattens():
    """p = [.25, .75]: at T = 0.5 the weights square -> [1/10, 9/10]; seeded draws follow it."""
    scores = torch.log(torch.tensor([[0.25, 0.75]]))
    gen = torch.Generator().manual_seed(0)
    draws = [sample_next_token(scores, temperature=0.5, generators=[gen]).item() for _ in range(4000)]
    assert abs(sum(draws) / 4000 - 0.9) < 0.02
    gen = torch.Generator().manual_seed(0)
    draws = [sample_next_token(scores, temperature=1.0, generators=[gen]).item() for _ in range(4000)]
    assert abs(sum(draws) / 4000 - 0.75) < 0.025


def test_a_rows_seed_gives_the_same_token_alone_or_in_a_batch():
    torch.manual_seed(1)
    scores = torch.randn(3, 50)
    alone = [sample_next_token(scores[1:2], temperature=1.0, generators=[torch.Generator().manual_seed(7)])
             for _ in range(1)]
    batch = sample_next_token(scores, temperature=torch.tensor([0.0, 1.0, 1.0]),
                              generators=[None, torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)])
    assert batch[1].item() == alone[0].item()
    assert batch[0].item() == scores[0].argmax().item()


def test_prob_space_never_samples_negative_mass_tokens():
    scores = cfg_scores(POS, NEG, 3.0, "prob")
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next_token(scores, temperature=1.0, generators=[gen]).item() for _ in range(300)}
    assert 1 not in draws and draws <= {0, 2}
    assert math.isclose(torch.softmax(scores, -1)[0, 0].item(), 0.8, rel_tol=1e-5)


def test_repeated_ngrams_are_banned_per_row():
    """Row 0, n = 2, history 1 2 3 1: the last token 1 was followed by 2 before, so 2 is banned.
    Row 1, n = 3, history 4 1 2 4 1: the tail (4, 1) was followed by 2 -> 2 banned.
    Row 2, n = 1: every token seen (0, 5) is banned. Row 3, n = 0: off. Row 4, n = 3 with 2 tokens: nothing."""
    scores = torch.zeros(5, 6)
    out = ban_repeated_ngrams(scores, [[1, 2, 3, 1], [4, 1, 2, 4, 1], [0, 5, 0], [1, 1, 1], [1, 1]], [2, 3, 1, 0, 3])
    banned = torch.isinf(out).nonzero().tolist()
    assert banned == [[0, 2], [1, 2], [2, 0], [2, 5]]
    assert not torch.isinf(scores).any()  # the input is left as it is


def test_mix_on_a_subset_of_the_vocabulary_is_the_full_mix_there():
    """Tokens 0 and 2 only (their log-probs normalised over all three): the mix there is the full mix's.

    prob, g = 3: [1, .25] (token 1's -.25 is not renormalised away); log, g = 3: [ln 2, ln .25].
    """
    cols = [0, 2]
    assert torch.allclose(cfg_mix(POS[:, cols], NEG[:, cols], 3.0, "prob"), torch.tensor([[1.0, 0.25]]), atol=1e-6)
    assert torch.allclose(cfg_mix(POS[:, cols], NEG[:, cols], 3.0, "log").exp(), torch.tensor([[2.0, 0.25]]),
                          atol=1e-6)
    for space in ("log", "prob"):
        full = cfg_mix(POS, NEG, 3.0, space)
        assert torch.allclose(cfg_mix(POS[:, cols], NEG[:, cols], 3.0, space), full[:, cols])
    with pytest.raises(ValueError, match="unknown CFG space"):
        cfg_mix(POS, NEG, 3.0, "linear")


def test_token_logprobs_normalise_the_scores_and_rank_the_alternatives():
    """Unnormalised log-scores (a clamped probability-space mix: -inf where the mix is <= 0): the chosen
    token's log-probability and the k likeliest tokens, per row; rows that did not ask get None."""
    from unleak.decoding.generator import token_logprobs

    scores = torch.tensor([[math.log(2.0), math.log(1.0), math.log(1.0), -math.inf],
                           [0.0, 0.0, 0.0, 0.0],
                           [math.log(3.0), -math.inf, math.log(1.0), -math.inf]])
    out = token_logprobs(scores, torch.tensor([1, 0, 2]), [2, None, 0])
    assert out[1] is None
    assert out[0].token_id == 1 and out[0].logprob == pytest.approx(math.log(0.25))
    assert [t for t, _ in out[0].top] == [0, 1] or [t for t, _ in out[0].top] == [0, 2]
    assert [lp for _, lp in out[0].top] == pytest.approx([math.log(0.5), math.log(0.25)])
    assert out[2].logprob == pytest.approx(math.log(0.25)) and out[2].top == ()
