"""`unleak eval compare`: configurations across runs, pooled, on hand-made results files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unleak.errors import UnleakError
from unleak.eval.compare import compare_runs, pooled, relative_change


def row(name, pii, hits, attempts, cut_hits=None, strict=None, known=None, general=None):
    """`general`: (answers holding a placeholder, requests, known values) of the general requests."""
    return {"configuration": name, "test_prompts": 4, "pii_original": pii, "pii_strict": strict,
            "known_values": known, "attack_successes": hits, "attack_attempts": attempts,
            "attack_stripped_successes": cut_hits, "attack_stripped_attempts": None if cut_hits is None else attempts,
            "utility_n": 4, **({} if general is None else {"general_placeholder_answers": general[0],
                                                           "general_requests": general[1],
                                                           "general_known_values": general[2]})}


def run_dir(path, rows, corrects, environment=None):
    path.mkdir(parents=True)
    results = [{"name": r["configuration"], "utility": {"correct": corrects[r["configuration"]]},
                **({"environment": environment} if environment else {})} for r in rows]
    (path / "results.json").write_text(json.dumps({"rows": rows, "results": results, "reference_rows": []}))
    return path


def test_relative_change():
    assert relative_change(1, 82) == pytest.approx(-81 / 82)
    assert relative_change(3, 2) == pytest.approx(0.5)
    assert relative_change(0, 0) is None and relative_change(None, 3) is None and relative_change(2, None) is None


def test_pooled_sums_counts_rates_over_all_attempts_and_pairs_utility_over_every_question():
    rows = [row("d", 1, 1, 10, cut_hits=0, strict=2, known=0), row("d", 0, 0, 30, cut_hits=3, strict=1, known=1)]
    p = pooled(rows, [[True, False], [True, True, False]], [[False, False], [True, False, True]])
    assert (p["pii_original"], p["pii_strict"], p["known_values"]) == (1, 3, 1)
    assert p["attack"] == {"successes": 1, "attempts": 40, "asr": 1 / 40}
    assert p["attack_stripped"] == {"successes": 3, "attempts": 40, "asr": 3 / 40}
    # differences per question: +1, 0 | 0, +1, -1 -> mean 1/5, sample variance (2 * 0.64 + 2 * 0.04 + 1.44) / 4 = 0.7
    assert p["utility"] == pytest.approx(3 / 5)
    assert p["utility_diff"]["difference"] == pytest.approx(0.2)
    assert p["utility_diff"]["se"] == pytest.approx((0.7 / 5) ** 0.5, abs=1e-4) and p["utility_diff"]["n"] == 5
    unknown = pooled([row("d", 1, 1, 10), row("d", None, 0, 10)], [None, None], [None, None])
    assert unknown["pii_original"] is None and unknown["pii_strict"] is None and unknown["attack_stripped"] is None
    assert "utility" not in unknown and unknown["general"] is None
    general = pooled([row("d", 1, 1, 10, general=(5, 24, 0)), row("d", 0, 0, 10, general=(3, 24, 2))],
                     [None, None], [None, None])["general"]
    assert general == {"placeholders": 8, "requests": 48, "share": 8 / 48, "known_values": 2}


def test_compare_runs_writes_the_table_json_and_plot(tmp_path):
    a = run_dir(tmp_path / "s0", [row("leaky", 35, 7, 73, 17, general=(0, 24, 8)),
                                  row("g3", 1, 1, 73, 0, general=(5, 24, 0)), row("only-s0", 0, 0, 73, 0)],
                {"leaky": [True, False, True, False], "g3": [True, True, True, False], "only-s0": [True] * 4})
    b = run_dir(tmp_path / "s1", [row("leaky", 25, 7, 102, 22, general=(0, 24, 3)),
                                  row("g3", 0, 0, 102, 0, general=(4, 24, 0))],
                {"leaky": [False, False, True, True], "g3": [False, False, True, True]},
                {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16"})
    got = compare_runs([a, b], tmp_path / "cmp", labels=["seed 0", "seed 1"])
    assert got["left_out"] == ["only-s0"] and [e["configuration"] for e in got["configurations"]] == ["leaky", "g3"]
    g3 = got["configurations"][1]
    assert g3["pooled"]["pii_original"] == 1 and g3["change"]["pii_original"] == pytest.approx(1 / 60 - 1)
    assert g3["change"]["attack"] == pytest.approx(1 / 14 - 1) and g3["change"]["attack_stripped"] == -1
    md = (tmp_path / "cmp" / "compare.md").read_text()
    # 60 -> 1 is -98.3 %; 14 -> 1 of 175 is -92.9 %; utility 5/8 vs 4/8 paired: +12.5 %
    assert "| g3 | 1 / 0 | 1 (-98.3 %) | 1 / 0 | 0.6 (1/175, -92.9 %) | 0 / 0 | 0.0 (0/175, -100.0 %) | 62.5 | " \
           "+12.5 ± 12.5 (8) | 18.8 % (9/48) | 0 / 0 |" in md
    assert "| 0.0 % (0/48) | 8 / 3 |" in md  # the leaky model's spill per run
    assert "| leaky | 35 / 25 | 60 (+0.0 %) | 7 / 7 | 8.0 (14/175, +0.0 %) |" in md and "left out: only-s0" in md
    assert "seed 0 (4 test prompts, 73 attack prompts, 4 questions)" in md  # no environment recorded
    assert "seed 1 (4 test prompts, 102 attack prompts, 4 questions, on cuda (NVIDIA H100 80GB HBM3), bfloat16)" in md
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][1] == {"label": "seed 1",
                                                                                     "path": str(b)}
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000


def test_bad_runs_are_refused_naming_the_file_and_field(tmp_path):
    good = run_dir(tmp_path / "good", [row("leaky", 3, 1, 5)], {"leaky": [True]})
    with pytest.raises(UnleakError, match="missing: not found"):
        compare_runs([good, tmp_path / "missing"], tmp_path / "o")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text('{"rows": [\n  {"configuration": }\n]}')
    with pytest.raises(UnleakError, match=r"broken/results.json:2: not valid JSON"):
        compare_runs([good, tmp_path / "broken"], tmp_path / "o")
    run_dir(tmp_path / "nofield", [{"configuration": "leaky", "pii_original": 1, "attack_attempts": 3}],
            {"leaky": [True]})
    with pytest.raises(UnleakError, match=r"nofield/results.json: rows\[0\]: field 'attack_successes' missing"):
        compare_runs([good, tmp_path / "nofield"], tmp_path / "o")
    with pytest.raises(UnleakError, match="reference configuration 'base' is not in every run"):
        compare_runs([good, good / "results.json"], tmp_path / "o", labels=["a", "b"], reference="base")
    with pytest.raises(UnleakError, match="at least two runs"):
        compare_runs([good], tmp_path / "o")
    with pytest.raises(UnleakError, match="distinct labels"):
        compare_runs([good, good], tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written for a refused comparison


def test_cli_compare_prints_the_table_and_exits_2_on_a_bad_run(tmp_path):
    a = run_dir(tmp_path / "a", [row("leaky", 4, 2, 9, 3), row("g3", 0, 0, 9, 0)],
                {"leaky": [True, False], "g3": [True, True]})
    b = run_dir(tmp_path / "b", [row("leaky", 2, 1, 5, 1), row("g3", 1, 0, 5, 0)],
                {"leaky": [False, False], "g3": [True, False]})
    cli = [sys.executable, "-m", "unleak.cli", "eval", "compare"]
    done = subprocess.run([*cli, str(a), str(b), "--out", str(tmp_path / "c")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| g3 | 0 / 1 | 1 (-83.3 %) | 0 / 0 | 0.0 (0/14, -100.0 %) |" in done.stdout
    bad = subprocess.run([*cli, str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nowhere: not found" in bad.stderr and "Traceback" not in bad.stderr
