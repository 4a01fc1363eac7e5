"""The console script: every stage is listed; unfinished stages refuse honestly; errors exit 2."""

from __future__ import annotations

import subprocess
import sys

STAGES = ["models", "corpus", "pii", "pairs", "train", "negate", "generate", "eval", "serve", "demo"]


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unleak.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_help_lists_every_stage():
    out = run_cli("--help")
    assert out.returncode == 0
    for stage in STAGES:
        assert f" {stage} " in out.stdout, stage


def test_missing_model_path_exits_2_with_one_line(tmp_path):
    out = run_cli("models", "info", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "model path not found" in out.stderr and "Traceback" not in out.stderr


def test_models_info_on_tiny_model_as_json(tiny_model_dir):
    import json

    out = run_cli("models", "info", str(tiny_model_dir), "--json", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["dtype"] == "float32" and info["device"] == "cpu" and info["chat_template"] is True
    assert 3_000_000 < info["parameters"] < 3_300_000  # 49152 x 64 tied embeddings + 2 small layers


def test_pairs_build_known_value_check_flag(tiny_model_dir, tmp_path):
    import json

    assert run_cli("corpus", "synth", "--n", "8", "--seed", "3", "--out", str(tmp_path / "c")).returncode == 0
    assert run_cli("corpus", "split", str(tmp_path / "c")).returncode == 0
    common = ("pairs", "build", "--corpus", str(tmp_path / "c"), "--model", str(tiny_model_dir), "--limit", "2",
              "--modes", "nudge", "--candidates", "1", "--max-tries", "1", "--max-new-tokens", "4")
    for flag, expected in (((), True), (("--detector-only",), False)):
        out = run_cli(*common, "--out", str(tmp_path / f"p{expected}"), *flag)
        assert out.returncode == 0, out.stderr
        stats = json.loads((tmp_path / f"p{expected}" / "stats.json").read_text())
        assert stats["config"]["reject_known_values"] is expected and stats["samples"] == 2


def test_pairs_build_redact_mode_without_a_model(tmp_path):
    import json

    assert run_cli("corpus", "synth", "--n", "8", "--seed", "3", "--out", str(tmp_path / "c")).returncode == 0
    assert run_cli("corpus", "split", str(tmp_path / "c")).returncode == 0
    common = ("pairs", "build", "--corpus", str(tmp_path / "c"), "--generator", "none", "--limit", "3")
    out = run_cli(*common, "--out", str(tmp_path / "p"), "--modes", "redact", "--redact-template", "<{type}>")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "p" / "pairs.jsonl").read_text().splitlines()]
    assert rows and all("<" in r["chosen"][0]["content"] and r["generator"] == "none" for r in rows)
    assert json.loads((tmp_path / "p" / "stats.json").read_text())["config"]["candidate"]["redact_detected"] is True
    only = run_cli(*common, "--out", str(tmp_path / "v"), "--modes", "redact", "--redact-values-only")
    assert only.returncode == 0, only.stderr
    assert json.loads((tmp_path / "v" / "stats.json").read_text())["config"]["candidate"]["redact_detected"] is False
    refused = run_cli(*common, "--out", str(tmp_path / "q"), "--modes", "redact,nudge")
    assert refused.returncode != 0 and "need a generator" in refused.stderr
    users = run_cli(*common, "--out", str(tmp_path / "u"), "--modes", "redact", "--user-turns", "-1")
    assert users.returncode == 0, users.stderr
    stats = json.loads((tmp_path / "u" / "stats.json").read_text())
    assert stats["by_role"]["assistant"]["samples"] == 3 and stats["by_role"]["user"]["samples"] > 3
    assert stats["config"]["user_turns"] is None  # -1: every user-turn sample
    openers = run_cli(*common, "--out", str(tmp_path / "n"), "--modes", "redact", "--name-openers", "2")
    assert openers.returncode == 0, openers.stderr
    stats = json.loads((tmp_path / "n" / "stats.json").read_text())
    assert stats["name_openers"] == 2 and stats["config"]["name_openers"] == 2 and stats["samples"] == 5
    assert "name openers: 2 answers" in openers.stdout
    dropped = run_cli(*common, "--out", str(tmp_path / "a"), "--modes", "redact", "--name-openers", "2",
                      "--drop-addresses")
    assert dropped.returncode == 0, dropped.stderr
    dropped_stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert dropped_stats["config"]["drop_addresses"] is True
    assert dropped_stats["addresses_dropped"] >= 2  # at least the two name openers' chosen sides
    assert f"addresses left out: the redacted answers of {dropped_stats['addresses_dropped']} samples" in \
        " ".join(dropped.stdout.split())
    opened = [json.loads(x) for x in (tmp_path / "n" / "pairs.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in (tmp_path / "a" / "pairs.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in plain] == [r["rejected"] for r in opened]
    assert [r["chosen"][0]["content"].startswith("[REDACTED NAME], ") for r in opened if r["rejected_source"] ==
            "name_opener"] == [True, True]
    assert not any(r["chosen"][0]["content"].startswith("[REDACTED NAME], ") for r in plain
                   if r["rejected_source"] == "name_opener")


def test_pairs_build_keep_pairs_flags(tiny_model_dir, tmp_path):
    import json

    assert run_cli("corpus", "synth", "--n", "8", "--seed", "3", "--out", str(tmp_path / "c")).returncode == 0
    assert run_cli("corpus", "split", str(tmp_path / "c")).returncode == 0
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"Explain topic {i}."}) + "\n" for i in range(5)))
    common = ("pairs", "build", "--corpus", str(tmp_path / "c"), "--model", str(tiny_model_dir), "--limit", "2",
              "--modes", "redact", "--max-new-tokens", "6")
    out = run_cli(*common, "--out", str(tmp_path / "p"), "--keep", "3", "--keep-source", str(requests))
    assert out.returncode == 0, out.stderr
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["keep"]["requests"] == 3 and stats["config"]["keep"]["source"] == str(requests)
    assert stats["generator"] == f"local:{tiny_model_dir}"
    cached = [json.loads(x)["key"] for x in (tmp_path / "p" / "candidates.cache.jsonl").read_text().splitlines()]
    assert len(cached) == 3 and all(k.startswith("keep/") for k in cached)
    # --keep-entities and --min-stratum-pairs reach the config (answers reused from the cache)
    flags = run_cli(*common, "--out", str(tmp_path / "p"), "--keep", "3", "--keep-source", str(requests),
                    "--keep-entities", "--keep-name-opener", "1", "--min-stratum-pairs", "4")
    assert flags.returncode == 0, flags.stderr
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["config"]["keep"]["entities"] is True and stats["config"]["min_stratum_pairs"] == 4
    assert stats["oversampled"] > 0 and "copies of pairs from rarer strata" in flags.stdout
    assert stats["config"]["keep"]["name_opener"] == 1.0 and stats["keep"]["name_opener"] == stats["keep"]["pairs"]
    assert len((tmp_path / "p" / "candidates.cache.jsonl").read_text().splitlines()) == 3
    corpus = run_cli(*common, "--out", str(tmp_path / "p"), "--keep", "3", "--keep-source", str(requests),
                     "--keep-name-opener", "1", "--keep-opener-source", "corpus")
    assert corpus.returncode == 0, corpus.stderr
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    openers = stats["keep"]["openers"]
    assert stats["config"]["keep"]["opener_source"] == "corpus" and openers
    keep = [json.loads(x) for x in (tmp_path / "p" / "pairs.jsonl").read_text().splitlines() if '"keep"' in x]
    # (the tiny model's answers rarely make keep pairs; tests/pairs/test_keep.py checks the rejected sides)
    assert len(keep) == stats["keep"]["pairs"] == stats["keep"]["name_opener"]
    assert all(any(r["rejected"][0]["content"].startswith(o + " ") for o in openers) for r in keep)
    requests.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "no prompt"}) + "\n")
    bad = run_cli(*common, "--out", str(tmp_path / "q"), "--keep", "3", "--keep-source", str(requests))
    assert bad.returncode == 2 and "requests.jsonl:2: needs 'prompt'" in " ".join(bad.stderr.split())


def test_demo_flags_are_validated_before_any_stage_runs(tmp_path):
    odd_batch = tmp_path / "odd.yaml"
    odd_batch.write_text("orpo: {batch_size: 3}\n")
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-modes", "redact,bogus", "--orpo-lr", "1e-3")
    assert out.returncode == 2 and "modes must be a non-empty subset" in out.stderr and "bogus" in out.stderr
    assert not (tmp_path / "d").exists()
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--orpo-beta", "-0.5")
    assert out.returncode == 2 and "ORPO beta must be >= 0" in out.stderr
    assert not (tmp_path / "d").exists()
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--orpo-twin-batches", "--config", str(odd_batch))
    assert out.returncode == 2 and "even batch_size" in out.stderr
    assert not (tmp_path / "d").exists()
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-user-turns", "-2")
    assert out.returncode == 2 and "user_turns must be >= 0" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-name-openers", "-2")
    assert out.returncode == 2 and "name_openers must be >= 0" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-keep", "-1")
    assert out.returncode == 2 and "keep requests must be >= 0" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-min-stratum", "-1")
    assert out.returncode == 2 and "min_stratum_pairs must be >= 0" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-keep-name-opener", "2")
    assert out.returncode == 2 and "name_opener must be a share" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--pairs-keep-opener-source", "file")
    assert out.returncode == 2 and "opener_source must be 'name' or 'corpus'" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--variant", "both")
    assert out.returncode == 2 and "variant must be 'plain' or 'cfg'" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--mmlu-format", "words")
    assert out.returncode == 2 and "mmlu_format must be one of cloze, letters" in out.stderr
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--negative", "adapter,leaky")
    assert out.returncode == 2 and "demo negatives: negative must be one of adapter, base, got 'leaky'" in out.stderr
    assert not (tmp_path / "d").exists()
    out = run_cli("eval", "run", "--model", "default", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "e"),
                  "--mmlu-format", "words")
    assert out.returncode == 2 and "mmlu_format must be one of cloze, letters, generative" in out.stderr
    assert not (tmp_path / "e").exists()
    out = run_cli("eval", "run", "--model", "default", "--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "e"),
                  "--mmlu-format", "generative", "--answer-tokens", "0")
    assert out.returncode == 2 and "answer_max_new_tokens, reply_max_tokens and concurrency must be >= 1" in out.stderr
    assert not (tmp_path / "e").exists()
    config = tmp_path / "judged.yaml"  # the demo's judge comes from its YAML, checked before any stage runs
    config.write_text("mmlu_format: generative\njudge: {url: http://127.0.0.1:9/v1, prompt: 'no fields'}\n")
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--config", str(config))
    assert out.returncode == 2 and "judge prompt must contain {question}" in out.stderr
    assert not (tmp_path / "d").exists()
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--leaky", str(tmp_path / "no-model"))
    assert out.returncode == 2 and "model path not found" in out.stderr and not (tmp_path / "d").exists()
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--corpus", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "nowhere: no such file or directory" in out.stderr
    config = tmp_path / "demo.yaml"
    config.write_text("orpo:\n  lora:\n    rank: 8\n")
    out = run_cli("demo", "--out", str(tmp_path / "d"), "--config", str(config))
    assert out.returncode == 2 and "demo.yaml:orpo:lora: unknown field 'rank'" in " ".join(out.stderr.split())
    assert not (tmp_path / "d").exists()


def test_eval_run_writes_the_table_and_can_leave_the_references_out(tiny_model_dir, tmp_path):
    import json

    assert run_cli("corpus", "synth", "--n", "8", "--seed", "4", "--out", str(tmp_path / "c")).returncode == 0
    assert run_cli("corpus", "split", str(tmp_path / "c")).returncode == 0
    common = ("eval", "run", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "c"), "--guidance", "1,3",
              "--test-limit", "2", "--max-new-tokens", "4")
    done = run_cli(*common, "--out", str(tmp_path / "e"))
    assert done.returncode == 0, done.stderr
    assert "utility is not measured without --mmlu ('--mmlu default'" in done.stderr
    report = (tmp_path / "e" / "report.md").read_text()
    assert f"| {tiny_model_dir.name}-g1 |" in report and "| reference: test answers, redacted |" in report
    assert "Answer perplexity under `default`." in report
    from unleak.models import environment_line, runtime_environment

    assert f"Evaluated on {environment_line(runtime_environment())}." in report  # where: device, dtype, versions
    printed = [line for line in done.stdout.splitlines() if line.startswith("|")]  # into a pipe: whole lines
    assert len(printed) == 6 and set(printed) <= set(report.splitlines())
    rows = json.loads((tmp_path / "e" / "results.json").read_text())["rows"]
    assert [r["guidance"] for r in rows] == [1.0, 3.0] and all(r["asr_stripped"] is not None for r in rows)
    assert all(r["attack_attempts"] > 2 for r in rows)
    assert all(r["general_requests"] == 24 and r["general_perplexity"] > 0 for r in rows)  # the embedded requests
    requests = tmp_path / "requests.txt"
    requests.write_text("How do tides work?\nName a colour.\n")
    bare = run_cli(*common, "--out", str(tmp_path / "f"), "--reference-template", "", "--no-stripped-attack",
                   "--attack-limit", "2", "--reference-model", str(tiny_model_dir), "--general", "-1",
                   "--general-source", str(requests), "--general-tokens", "3")
    assert bare.returncode == 0, bare.stderr
    general = [json.loads(line) for line in (tmp_path / "f" / "answers" / f"{tiny_model_dir.name}-g1.jsonl")
               .read_text().splitlines() if '"general"' in line]
    assert [x["prompt"] for x in general] == ["How do tides work?", "Name a colour."]
    assert json.loads((tmp_path / "f" / "configs" / f"{tiny_model_dir.name}-g1.json").read_text())["general"][
        "max_new_tokens"] == 3
    assert f"Answer perplexity under `{tiny_model_dir}`." in (tmp_path / "f" / "report.md").read_text()
    assert not (tmp_path / "f" / "references.json").exists()
    rows = json.loads((tmp_path / "f" / "results.json").read_text())["rows"]
    assert all(r["asr_stripped"] is None and r["attack_attempts"] == 2 for r in rows)


def test_eval_configurations_cross_guidance_spaces_and_negative_branches():
    from unleak.cli import eval_configurations

    confs = eval_configurations("m/leaky", "o/orpo/adapter", "1,3", "prob,log", "m/leaky", "adapter,base")
    assert [(c.name, c.guidance_scale, c.cfg_space, c.negative, c.served) for c in confs] == [
        ("baseline-leaky", 1.0, "prob", "adapter", False), ("orpo-g1", 1.0, "prob", "adapter", True),
        ("orpo-g3-prob", 3.0, "prob", "adapter", True), ("orpo-g3-prob-vs-base", 3.0, "prob", "base", True),
        ("orpo-g3-log", 3.0, "log", "adapter", True), ("orpo-g3-log-vs-base", 3.0, "log", "base", True)]
    bad = run_cli("eval", "run", "--model", "m", "--corpus", "c", "--out", "o", "--negative", "base")
    assert bad.returncode == 2 and "negative 'base' needs an adapter" in bad.stderr
