"""The end-to-end demo in its --quick form on the embedded default (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unleak.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_quick_demo_runs_caches_and_reruns_only_what_changed(tmp_path, default_model_dir):
    out = tmp_path / "demo"
    cfg = DemoConfig.quick(mmlu_limit=8)
    result = run_demo(cfg, out)
    names = [r["configuration"] for r in result["rows"]]
    defended = ["orpo-plain-g1", "orpo-plain-g2-prob", "orpo-plain-g3-prob", "orpo-plain-g5-prob"]
    assert names == ["base", "leaky", *defended]
    # the defended model's guidance settings are evaluated together (one prefill per prompt)
    assert json.loads((out / "eval" / "configs" / f"{defended[-1]}.json").read_text())["evaluated_with"] == defended
    report = (out / "report.md").read_text()
    assert "| leaky |" in report and "Wall times" in report
    assert json.loads((out / "results.json").read_text())["rows"][1]["configuration"] == "leaky"
    assert (out / "pairs" / "pairs_cfg.jsonl").read_text().strip()
    assert (out / "orpo" / "plain" / "adapter" / "adapter_config.json").is_file()
    pairs = [json.loads(x) for x in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["mode"] == "redact" and "[" in p["chosen"][0]["content"] for p in pairs)
    stamps = {s: (out / s / "stage.json").stat().st_mtime_ns for s in ("corpus", "leaky", "pairs", "orpo", "eval")}

    assert result["times"]["stages"] == pytest.approx(sum(result["times"][s] for s in stamps), abs=0.2)
    assert "cached:" not in report

    again = run_demo(cfg, out)  # everything cached
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in stamps} == stamps
    assert again["times"]["stages"] == result["times"]["stages"] > again["times"]["this_run"]
    assert "(cached: corpus, leaky, pairs, orpo, eval)" in (out / "report.md").read_text()

    run_demo(dataclasses.replace(cfg, test_limit=3), out)  # an evaluation setting: only eval reruns
    after = {s: (out / s / "stage.json").stat().st_mtime_ns for s in stamps}
    assert {s: after[s] for s in ("corpus", "leaky", "pairs", "orpo")} == \
        {s: stamps[s] for s in ("corpus", "leaky", "pairs", "orpo")}
    assert after["eval"] != stamps["eval"]
    assert json.loads((out / "results.json").read_text())["rows"][0]["test_prompts"] == 3
