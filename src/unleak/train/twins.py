"""Twin batches: each CFG pair in the same batch as its twin, the same pair under the other system prompt.

The CFG variant of the pairs (`unleak.pairs.build.cfg_variant`) holds every
pair twice: under the positive system prompt, and under the negative one with
chosen and rejected swapped. Everything but the system prompt is the same in
the two rows, so whatever a model learns from one row without reading the
system prompt, the twin's row unlearns. In the original's random order the
two rows land in different steps, and those two moves dominate the gradient
each time; in one batch they cancel within the step and what is left is the
difference between the prompts, the thing guidance needs. Measured on the
demo's leaky 135M model and CFG pairs (one epoch, lr 1e-3): mean log-odds of
chosen over rejected ~0 through the epoch in random order, 2-3 by its end
with twin batches.

- `twin_units(rows)`: the rows grouped into twins (index pairs, positive
  first) and singletons, in file order;
- `TwinBatchSampler`: an epoch's order for `transformers.Trainer`: the units
  shuffled (seeded, per epoch, so a resumed run sees the same order), the
  singletons paired up, so with an even batch size no twin is split.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Sampler

#: the `system` field of a CFG pair (`cfg_variant`) and the twin it pairs with
TWIN_OF = {"positive": "negative", "negative": "positive"}


def _twin_key(row: dict[str, Any]) -> str:
    """What a row and its twin share: the dialog without the system message, the two answers as a set, and
    where the pair is cut (`split`: a `space_pairs` row twins only with another)."""
    dialog = [m for m in row["prompt"] if m.get("role") != "system"]
    answers = sorted(json.dumps(row[side], sort_keys=True) for side in ("chosen", "rejected"))
    return json.dumps([dialog, answers, row.get("split")], sort_keys=True)


def twin_units(rows: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Row indices grouped into twins `[positive, negative]` and singletons, ordered by their first row.

    A row with `system` "positive" and one with "negative" are twins when their dialogs (system message
    left out) and their answers (as a set: the twin's are swapped, a keep pair's are not) are equal.
    Repeated pairs (the demo's copies of rarer strata) pair up in order: the k-th positive copy with
    the k-th negative one. Rows of the plain variant (no `system` field) and twinless rows stay single.
    """
    waiting: dict[tuple[str, str], list[int]] = defaultdict(list)
    twin_of: dict[int, int] = {}
    for i, row in enumerate(rows):
        side = row.get("system")
        if side not in TWIN_OF:
            continue
        key = _twin_key(row)
        if waiting[(key, TWIN_OF[side])]:
            j = waiting[(key, TWIN_OF[side])].pop(0)
            twin_of[i], twin_of[j] = j, i
        else:
            waiting[(key, side)].append(i)
    units, seen = [], set()
    for i, row in enumerate(rows):
        if i in seen:
            continue
        unit = [i] if i not in twin_of else sorted((i, twin_of[i]), key=lambda k: rows[k]["system"] != "positive")
        seen.update(unit)
        units.append(unit)
    return units


class TwinBatchSampler(Sampler[int]):
    """Indices for `Trainer`'s batches that keep each twin in one batch (with an even batch size).

    Per epoch (`set_epoch`, which the training loop calls), the units are shuffled with
    `random.Random(seed + epoch)`; singletons are then taken two at a time, in that order, so that
    every unit but possibly the last fills two places. Each index appears once per epoch.
    """

    def __init__(self, units: Sequence[Sequence[int]], seed: int = 0) -> None:
        self.units = [list(u) for u in units]
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(u) for u in self.units)

    def order(self, epoch: int) -> list[list[int]]:
        """The epoch's units of two (the last may be one): twins, and singletons paired in shuffled order."""
        units = list(self.units)
        random.Random(self.seed + epoch).shuffle(units)
        twos, single = [], None
        for unit in units:
            if len(unit) == 2:
                twos.append(unit)
            elif single is None:
                single = unit[0]
            else:
                twos.append([single, unit[0]])
                single = None
        return twos + ([[single]] if single is not None else [])

    def __iter__(self) -> Iterator[int]:
        for unit in self.order(self.epoch):
            yield from unit
