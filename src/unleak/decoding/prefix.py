"""Shared-prefix prefill: which prompts of a batch start from another prompt's KV cache.

The prompts of one decoding batch often begin alike. The extraction attack's
contexts of one conversation are prefixes of each other (the text before
each placeholder; its two variants differ by one trailing space), the test
prompts of a conversation share its dialog, and every served request starts
with the same system prompt. Measured on the demo's 146 attack prompts:
18,618 prompt tokens, 3,972 distinct prefixes.

`plan_prefill` splits the prefill into two forwards. *Hosts* are prefilled
whole in the first; every other prompt (a *guest*) takes the first `shared`
tokens of one host's cache (same group: the same adapter) and prefills only
the rest of its tokens, at least its last one, in the second, over all
rows, where hosts have only padding. A batched forward computes every
padded position, so the plan minimises the positions computed:

    cost = hosts x (longest host) + rows x (longest guest suffix) + forward_cost

against `rows x (longest prompt)` for one forward without sharing (the plan
then has no guests). Hosts are chosen greedily, longest prompt first, for
each cap on the guests' suffix length; the cheapest plan wins.
`forward_cost` (in positions) charges the second forward's fixed cost, so
sharing a few tokens does not split the prefill.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

#: positions a second prefill forward must save to be worth its fixed cost (per-layer overheads)
FORWARD_COST = 32


@dataclass(frozen=True)
class PrefillPlan:
    """Hosts (row indices, ascending), and per row: the index into `hosts` of the cache it starts from and
    how many of that cache's tokens it keeps (a host: all of its own)."""

    hosts: tuple[int, ...]
    host_of: tuple[int, ...]
    shared: tuple[int, ...]
    #: padded positions the plan computes (the second forward's fixed cost included)
    cost: int

    @property
    def guests(self) -> tuple[int, ...]:
        return tuple(r for r, h in enumerate(self.host_of) if self.hosts[h] != r)


def _greedy(rows: Sequence[Sequence[int]], groups: Sequence[Hashable], cap: int
            ) -> tuple[list[int], list[int], list[int]]:
    """Hosts, each row's host row and shared length, when guests may prefill at most `cap` tokens."""
    n = len(rows)
    host_row, shared = list(range(n)), [len(r) for r in rows]
    hosts: list[int] = []
    tries: dict[Hashable, dict] = {}
    for r in sorted(range(n), key=lambda r: (-len(rows[r]), r)):
        ids = rows[r]
        node, depth = tries.setdefault(groups[r], {}), 0
        for t in ids:  # the longest prefix some host (of the same group) shares with this row
            child = node.get(t)
            if child is None:
                break
            node, depth = child, depth + 1
        keep = min(depth, len(ids) - 1)  # a guest prefills at least its last token (its logits)
        if keep > 0 and len(ids) - keep <= cap:
            host_row[r], shared[r] = node[None], keep
            continue
        hosts.append(r)
        node = tries[groups[r]]
        for t in ids:
            node = node.setdefault(t, {None: r})
    return sorted(hosts), host_row, shared


def plan_prefill(rows: Sequence[Sequence[int]], groups: Sequence[Hashable] | None = None,
                 forward_cost: int = FORWARD_COST) -> PrefillPlan:
    """The cheapest two-forward prefill of `rows` (token ids); rows share only within equal `groups`."""
    n = len(rows)
    if n == 0:
        raise ValueError("no rows to prefill")
    groups = list(groups) if groups is not None else [None] * n
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} rows")
    width = max(len(r) for r in rows)
    best = PrefillPlan(tuple(range(n)), tuple(range(n)), tuple(len(r) for r in rows), n * width)
    cap = 1
    while cap < width:
        hosts, host_row, shared = _greedy(rows, groups, cap)
        if len(hosts) < n:
            suffix = max(len(rows[r]) - shared[r] for r in range(n) if host_row[r] != r)
            cost = len(hosts) * max(len(rows[h]) for h in hosts) + n * suffix + forward_cost
            if cost < best.cost:
                index = {h: i for i, h in enumerate(hosts)}
                best = PrefillPlan(tuple(hosts), tuple(index[host_row[r]] for r in range(n)), tuple(shared), cost)
        cap *= 2
    return best
