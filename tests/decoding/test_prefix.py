"""`plan_prefill` on hand-computed rows: hosts, guests, shared lengths and cost."""

from __future__ import annotations

import pytest

from unleak.decoding.prefix import PrefillPlan, plan_prefill

A = [1, 2, 3, 4, 5, 6, 7, 8]
B = [1, 2, 3, 4, 5, 6, 7]  # A's prefix: keeps 6 of A's tokens and prefills its last one
C = [1, 2, 3, 4, 5, 6, 7, 9]  # shares 7 with A
D = [9, 9]  # shares nothing


def test_guests_keep_their_longest_prefix_of_a_host_and_prefill_at_least_one_token():
    plan = plan_prefill([A, B, C, D], forward_cost=0)
    # hosts A and D in the first forward (2 x 8 positions), all 4 rows in the second (suffixes of 1)
    assert plan == PrefillPlan(hosts=(0, 3), host_of=(0, 0, 0, 1), shared=(8, 6, 7, 2), cost=2 * 8 + 4 * 1)
    assert plan.guests == (1, 2)


def test_rows_share_only_within_their_group():
    plan = plan_prefill([A, B, C, D], groups=["x", "x", "y", "x"], forward_cost=0)
    assert plan.hosts == (0, 2, 3) and plan.guests == (1,)
    assert plan.shared[1] == 6 and plan.cost == 3 * 8 + 4 * 1


def test_no_split_when_the_second_forward_costs_more_than_it_saves():
    # sharing saves 32 - 20 = 12 positions: less than a forward's fixed cost of 32
    plan = plan_prefill([A, B, C, D], forward_cost=32)
    assert plan.guests == () and plan.hosts == (0, 1, 2, 3) and plan.cost == 4 * 8
    assert plan_prefill([A, B, C, D], forward_cost=11).guests == (1, 2)


def test_a_long_suffix_is_not_worth_padding_every_row_to():
    # E and F share 2 tokens: one hosting the other would pad all 3 rows to 10 in the second forward;
    # G is F's prefix
    e, f, g = [1, 2] + [5] * 10, [1, 2] + [6] * 10, [1, 2, 6]
    plan = plan_prefill([e, f, g], forward_cost=0)
    assert plan.hosts == (0, 1) and plan.guests == (2,) and plan.shared[2] == 2
    assert plan.cost == 2 * 12 + 3 * 1


def test_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        plan_prefill([])
    with pytest.raises(ValueError, match="2 groups for 1 rows"):
        plan_prefill([A], groups=["x", "y"])
