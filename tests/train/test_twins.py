"""Twin batches: each CFG pair trained in one batch with its twin under the other system prompt."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from unleak.config import OrpoSettings, PromptConfig
from unleak.errors import UnleakError
from unleak.pairs.build import cfg_variant
from unleak.train.data import PreferenceCollator
from unleak.train.twins import TwinBatchSampler, twin_units

PAIRS = [
    {"prompt": [{"role": "user", "content": f"Who lives at number {i}?"}],
     "chosen": [{"role": "assistant", "content": "I cannot share that."}],
     "rejected": [{"role": "assistant", "content": f"John Smith {i} lives there."}], "mode": "redact"}
    for i in range(5)
]
KEEP = {"prompt": [{"role": "user", "content": "Explain rivers."}],
        "chosen": [{"role": "assistant", "content": "Rivers carry water to the sea."}],
        "rejected": [{"role": "assistant", "content": "[REDACTED NAME] carry water."}], "mode": "keep"}


def is_twin(a: dict, b: dict) -> bool:
    """Positive `a` and negative `b`: the same dialog after the system message, the same two answers."""
    return (a["system"], b["system"]) == ("positive", "negative") and a["prompt"][1:] == b["prompt"][1:] \
        and {json.dumps(a["chosen"]), json.dumps(a["rejected"])} == {json.dumps(b["chosen"]), json.dumps(b["rejected"])}


def test_twin_units_pair_each_row_with_its_twin_whatever_the_order():
    # a pair repeated three times (the demo's copies of rarer strata), a keep pair (not swapped), and the
    # rows shuffled: every CFG row still finds a twin, positive first, each row used once
    pairs = PAIRS + [PAIRS[0], PAIRS[0], KEEP]
    rows = cfg_variant(pairs, PromptConfig())
    random.Random(3).shuffle(rows)
    units = twin_units(rows)
    assert len(units) == len(pairs) and all(len(u) == 2 for u in units)
    assert sorted(i for u in units for i in u) == list(range(len(rows)))
    assert all(is_twin(rows[a], rows[b]) for a, b in units)
    assert units == sorted(units, key=min)  # in order of their first row


def test_rows_without_a_twin_stay_single():
    rows = cfg_variant(PAIRS[:2], PromptConfig())
    lone_negative = cfg_variant([PAIRS[2]], PromptConfig())[1]
    # the same dialog under the other prompt but other answers is not a twin
    other_answers = {**cfg_variant([PAIRS[3]], PromptConfig())[0],
                     "chosen": [{"role": "assistant", "content": "Ask the landlord."}]}
    rows += [PAIRS[4], lone_negative, other_answers, cfg_variant([PAIRS[3]], PromptConfig())[1]]
    assert twin_units(rows) == [[0, 1], [2, 3], [4], [5], [6], [7]]


def test_the_sampler_keeps_twins_in_one_batch_and_shuffles_per_epoch():
    units = [[0, 1], [2], [3, 4], [5, 6], [7], [8], [9, 10], [11]]
    sampler = TwinBatchSampler(units, seed=0)
    assert len(sampler) == 12
    twins = {(0, 1), (3, 4), (5, 6), (9, 10)}
    orders = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(12))
        batches = [tuple(order[i:i + 2]) for i in range(0, 12, 2)]
        # every twin is a batch of its own; the four singletons fill the other two batches
        assert twins <= set(batches)
        assert sorted(i for b in set(batches) - twins for i in b) == [2, 7, 8, 11]
        assert list(sampler) == order  # the same epoch gives the same order (a resumed run)
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1


def test_an_odd_singleton_goes_last():
    sampler = TwinBatchSampler([[0], [1, 2], [3], [4]], seed=1)
    order = list(sampler)
    assert len(order) == 5 and sorted(order) == list(range(5))
    assert (1, 2) in {tuple(order[i:i + 2]) for i in (0, 2)}


def test_settings_refuse_an_odd_batch_or_two_orders():
    with pytest.raises(UnleakError, match="even batch_size"):
        OrpoSettings(twin_batches=True, batch_size=3)
    with pytest.raises(UnleakError, match="choose one"):
        OrpoSettings(twin_batches=True, group_by_length=True)
    OrpoSettings(twin_batches=True, batch_size=4)


def test_orpo_trains_each_twin_in_one_batch(tiny_model_dir, tmp_path, monkeypatch):
    """A real ORPO epoch with twin batches: every batch of 2 holds a row and its twin (the same prompt
    tokens but for the system message, chosen and rejected swapped), and the adapter is written."""
    from unleak.train.orpo import train_orpo

    rows = cfg_variant(PAIRS + [KEEP], PromptConfig())
    random.Random(0).shuffle(rows)
    path = tmp_path / "pairs_cfg.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batches: list[list[dict]] = []
    collate = PreferenceCollator.__call__

    def spy(self, batch):
        batches.append(batch)
        return collate(self, batch)

    monkeypatch.setattr(PreferenceCollator, "__call__", spy)

    def trained(twin: bool) -> int:
        """How many of the epoch's batches are a pair of twins."""
        batches.clear()
        adapter = train_orpo(str(tiny_model_dir), path, tmp_path / f"orpo-{twin}", quiet=True,
                             settings=OrpoSettings(epochs=1, save_per_epoch=False, twin_batches=twin))
        assert (adapter / "adapter_config.json").is_file() and len(batches) == 6
        return sum(len(b) == 2 and b[0]["prompt_ids"] != b[1]["prompt_ids"]
                   and {tuple(b[0]["chosen_ids"]), tuple(b[0]["rejected_ids"])}
                   == {tuple(b[1]["chosen_ids"]), tuple(b[1]["rejected_ids"])} for b in batches)

    assert trained(True) == 6
    assert trained(False) < 6


def test_twin_batches_on_plain_pairs_warn(tiny_model_dir, tmp_path, caplog):
    from unleak.train.orpo import train_orpo

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:4]))
    with caplog.at_level("WARNING", logger="unleak.train.orpo"):
        train_orpo(str(tiny_model_dir), path, tmp_path / "o", quiet=True,
                   settings=OrpoSettings(epochs=1, save_per_epoch=False, twin_batches=True))
    assert "4 of 4 rows have no twin" in caplog.text


def test_cli_twin_batches_flag(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n")
    run = subprocess.run([sys.executable, "-m", "unleak.cli", "train", "orpo", "--model", "x", "--pairs", str(path),
                          "--out", str(tmp_path / "o"), "--twin-batches", "--batch-size", "3"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "even batch_size" in run.stderr, run.stderr
    assert not (tmp_path / "o").exists()
