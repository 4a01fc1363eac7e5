"""The end-to-end demo in its --quick form on the embedded default (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unleak.demo import DemoConfig, run_demo
from unleak.models import environment_line, runtime_environment


@pytest.mark.slow
def test_quick_demo_runs_caches_and_reruns_only_what_changed(tmp_path, default_model_dir):
    out = tmp_path / "demo"
    cfg = DemoConfig.quick(mmlu_limit=8)
    result = run_demo(cfg, out)
    names = [r["configuration"] for r in result["rows"]]
    defended = ["orpo-plain-g1", *(f"orpo-plain-g{g}-prob{n}" for g in (2, 3, 5) for n in ("", "-vs-base"))]
    assert names == ["base", "leaky", *defended]
    # the defended model's guidance settings, both negative branches, are evaluated together (one prefill per
    # prompt)
    assert json.loads((out / "eval" / "configs" / f"{defended[-1]}.json").read_text())["evaluated_with"] == defended
    report = (out / "report.md").read_text()
    assert "| leaky |" in report and "Wall times" in report
    # where it ran: the device, the dtype, the libraries (a bf16 GPU run trains another adapter than fp32 on CPU)
    env = json.loads((out / "results.json").read_text())["environment"]
    assert env == result["environment"] == runtime_environment()
    assert f"Evaluated on {environment_line(env)}." in report
    assert json.loads((out / "results.json").read_text())["rows"][1]["configuration"] == "leaky"
    # the targets, checked on this run's rows (the method's: g = 3, probability space)
    targets = json.loads((out / "results.json").read_text())["targets"]
    assert targets == result["targets"] and len(targets) == 7 and "`orpo-plain-g3-prob`" in report
    # the quick run's 3 general requests, answered by every row; the perplexity threshold read on them too
    assert targets[-2]["target"] == "answer perplexity on general requests within +10 %"
    assert all(r["general_requests"] == 3 for r in result["rows"]) and "3 general requests (12 tokens" in report
    assert all(f"| {t['target']} | {t['value']} |" in report for t in targets)
    assert (out / "pairs" / "pairs_cfg.jsonl").read_text().strip()
    assert (out / "orpo" / "plain" / "adapter" / "adapter_config.json").is_file()
    pairs = [json.loads(x) for x in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    redact = [p for p in pairs if p["mode"] == "redact"]
    assert redact and all("[" in p["chosen"][0]["content"] for p in redact)
    # keep pairs: the base model's answers to general requests against invented placeholders
    keep = [p for p in pairs if p["mode"] == "keep"]
    stats = json.loads((out / "pairs" / "stats.json").read_text())
    assert stats["keep"]["requests"] == 4 and len(keep) == stats["keep"]["pairs"] == len(pairs) - len(redact)
    assert all("[REDACTED" not in p["chosen"][0]["content"] and "[REDACTED" in p["rejected"][0]["content"]
               for p in keep)
    assert stats["keep"]["name_opener"] <= sum(p["rejected"][0]["content"].startswith("[REDACTED NAME], ")
                                               for p in keep)
    # rarer strata repeated up to 2 pairs each; the copies are marked
    assert stats["oversampled"] == sum("copy" in p for p in pairs) > 0
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


def test_demo_on_ones_own_corpus_and_leaky_model(tmp_path, tiny_model_dir):
    """`--corpus`: a user's corpus directory with its own train/test split; `--leaky`: a model that already
    leaks instead of the fine-tune (here the first run's); on a tiny model (fast)."""
    from unleak.corpus.store import save_corpus
    from unleak.corpus.synth import synthesize_corpus

    convs = synthesize_corpus(10, seed=5)
    src = save_corpus(tmp_path / "mine", convs, {})
    split = {"train": [c.id for c in convs[:7]], "test": [c.id for c in convs[7:]]}
    (src / "split.json").write_text(json.dumps(split))
    out = tmp_path / "demo"
    cfg = DemoConfig.quick(model=str(tiny_model_dir), corpus=str(src), guidance=(3.0,), mmlu_limit=4)
    result = run_demo(cfg, out)
    assert json.loads((out / "corpus" / "split.json").read_text()) == split
    report = (out / "report.md").read_text()
    assert f"corpus: 10 conversations from {src}, split by conversation: 7 train, 3 test" in report
    tested = {row["conversation"] for row in map(json.loads, (out / "eval" / "answers" / "leaky.jsonl").open())
              if row["kind"] in ("test", "attack")}
    assert tested and tested <= set(split["test"])  # evaluated on the user's test split only
    assert [r["configuration"] for r in result["rows"]] == ["base", "leaky", "orpo-plain-g1", "orpo-plain-g3-prob",
                                                            "orpo-plain-g3-prob-vs-base"]
    stamps = {s: (out / s / "stage.json").stat().st_mtime_ns for s in ("corpus", "pairs", "orpo", "eval")}

    given = run_demo(dataclasses.replace(cfg, leaky=str(out / "leaky")), out)
    after = {s: (out / s / "stage.json").stat().st_mtime_ns for s in stamps}
    assert {s: after[s] for s in ("corpus", "pairs")} == {s: stamps[s] for s in ("corpus", "pairs")}
    assert after["orpo"] != stamps["orpo"] and after["eval"] != stamps["eval"]  # the defence of the given model
    assert "leaky" not in given["times"] and f"leaky model given: {out / 'leaky'}" in (out / "report.md").read_text()
    leaky_conf = json.loads((out / "eval" / "configs" / "leaky.json").read_text())["configuration"]
    assert leaky_conf["model"] == str(out / "leaky")
    assert ", space pairs" not in (out / "report.md").read_text()

    # ORPO also on the pairs cut after the lone space before a digit value (`--orpo-space-pairs`): only the
    # defence reruns, and it trains more rows than the pairs file holds
    spaced = dataclasses.replace(cfg, leaky=str(out / "leaky"), orpo=dataclasses.replace(cfg.orpo, space_pairs=True))
    run_demo(spaced, out)
    settings = json.loads((out / "orpo" / "plain" / "settings.json").read_text())
    pairs = (out / "pairs" / "pairs.jsonl").read_text().splitlines()
    assert settings["space_pairs"] is True and settings["rows"] > len(pairs)
    assert ", space pairs; MMLU subset" in (out / "report.md").read_text()
    assert (out / "pairs" / "stage.json").stat().st_mtime_ns == stamps["pairs"]

    # name-opener pairs (`--pairs-name-openers`), the addresses left out (`--pairs-drop-addresses`): the pairs
    # rerun with them, and the report says so
    opened = dataclasses.replace(spaced, pairs=dataclasses.replace(cfg.pairs, name_openers=2, drop_addresses=True))
    run_demo(opened, out)
    stats = json.loads((out / "pairs" / "stats.json").read_text())
    assert stats["name_openers"] == 2 and stats["pairs"] > len(pairs) and stats["config"]["drop_addresses"]
    assert ", name openers from 2 answers, addresses left out of the redacted answers" in \
        (out / "report.md").read_text()


def test_demo_rows_guided_away_from_the_leaky_model_in_probability_space_only(tmp_path):
    from unleak.demo import demo_configurations
    from unleak.errors import UnleakError

    rows = demo_configurations(DemoConfig(), "base", "leaky", tmp_path / "orpo")  # the default: both negatives
    guided = [f"orpo-plain-g{g}-{n}" for g in (2, 3, 5) for n in ("prob", "prob-vs-base", "log")]
    assert [r.name for r in rows] == ["base", "leaky", "orpo-plain-g1", *guided]
    vs_base = [r for r in rows if r.name.endswith("-vs-base")]
    assert {(r.negative, r.cfg_space, r.adapter) for r in vs_base} == {
        ("base", "prob", str(tmp_path / "orpo" / "plain" / "adapter"))}
    method = demo_configurations(DemoConfig(negatives=("adapter",), base_negative_spaces=("prob", "log")), "b", "l",
                                 tmp_path)
    assert not [r for r in method if r.name.endswith("-vs-base")] and len(method) == 9
    with pytest.raises(UnleakError, match="base_negative_spaces: lin is not one of log, prob"):
        DemoConfig(base_negative_spaces=("lin",))
