"""Evaluating a deployment through its OpenAI-compatible API: a live `unleak serve` app (tiny model, a random
LoRA), the real `openai` client; the served row must equal the same configuration evaluated in process."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unleak.config import EndpointConfig, JudgeConfig
from unleak.errors import UnleakError
from unleak.serve.app import build_server_generator, create_app
from unleak.serve.background import live_server
from unleak.serve.policies import policies_from_dict

from tests.eval.test_eval import assert_fluency_of_the_answers_text

POLICIES = {
    "policies": {
        "public": {"adapter": "unleak", "guidance_scale": 3.0, "cfg_space": "prob", "max_tokens": 64},
        "short": {"adapter": "unleak", "guidance_scale": 3.0, "max_tokens": 4},
    },
    "keys": {"sk-public": "public", "sk-short": "short"},
}
KEY_ENV = "UNLEAK_TEST_ENDPOINT_KEY"


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapter_dir):
    generator = build_server_generator(str(tiny_model_dir), {"unleak": str(adapter_dir)}, max_batch=8)
    app = create_app(generator, policies_from_dict(POLICIES, {"unleak"}), model_name="tiny")
    with live_server(app) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from unleak.corpus.store import save_corpus, split_corpus
    from unleak.corpus.synth import synthesize_corpus

    path = save_corpus(tmp_path_factory.mktemp("c") / "c", synthesize_corpus(10, seed=2), {})
    split_corpus(path, 0.3, seed=0)
    return path


def answers_of(out, name):
    return [json.loads(line) for line in (out / "answers" / f"{name}.jsonl").read_text().splitlines()]


def test_a_served_defence_scores_as_the_same_configuration_in_process(server, corpus, tiny_model_dir, adapter_dir,
                                                                       tmp_path, monkeypatch):
    from unleak.eval.report import write_report
    from unleak.eval.run import EvalConfiguration, EvalSettings, configuration_identity, run_evaluation

    mmlu = tmp_path / "mc.jsonl"
    mmlu.write_text("".join(json.dumps({"subject": "s", "question": f"Which is {c}?", "choices": ["a", "b", "c", "d"],
                                        "answer": i % 4}) + "\n" for i, c in enumerate("abcd")))
    monkeypatch.setenv(KEY_ENV, "sk-public")
    endpoint = EndpointConfig(server, api_key_env=KEY_ENV, concurrency=4)  # the model's name from /v1/models
    confs = [EvalConfiguration("local", str(tiny_model_dir), str(adapter_dir), 3.0, "prob"),
             EvalConfiguration("served", str(tiny_model_dir), endpoint=endpoint)]
    settings = EvalSettings(leakage_max_new_tokens=8, attack_limit=6, mmlu=str(mmlu), mmlu_limit=None,
                            mmlu_format="generative", judge=JudgeConfig(answer_max_new_tokens=8),
                            reference_model=str(tiny_model_dir), reference_template=None)
    out = tmp_path / "e"
    local, served = run_evaluation(corpus, confs, out, settings, progress=False)
    assert served["endpoint_model"] == "tiny" and served["configuration"]["endpoint"]["url"] == server
    assert "environment" not in served and local["environment"]["device"] in ("cpu", "cuda")  # the server's is not ours
    local_rows, served_rows = answers_of(out, "local"), answers_of(out, "served")
    assert len(served_rows) == len(local_rows) and any(r["kind"] == "attack" for r in served_rows)
    for a, b in zip(local_rows, served_rows, strict=True):  # every answer, attack output and verdict
        assert a == b
    assert any(r.get("answer") for r in served_rows if r["kind"] == "test")
    for key in ("pii", "known_values", "attack", "attack_stripped"):
        assert served[key] == local[key]
    assert served["utility"]["correct"] == local["utility"]["correct"]
    # an endpoint returns text: its answers are read as the reference tokenizes that text (a random model's
    # generated ids are often not the text's own tokenization, so the local row's count can differ)
    assert_fluency_of_the_answers_text(served, out, corpus, tiny_model_dir)

    stamp = (out / "configs" / "served.json").stat().st_mtime_ns
    run_evaluation(corpus, confs, out, settings, progress=False)  # resumed: the served row is not asked again
    assert (out / "configs" / "served.json").stat().st_mtime_ns == stamp
    monkeypatch.setenv(KEY_ENV, "sk-short")  # another key (another policy): not the same row
    assert configuration_identity(confs[1]) != dict(configuration_identity(confs[1]), key="x")
    with pytest.raises(UnleakError, match=r"stopped after 4 of the 8 tokens asked"):
        run_evaluation(corpus, confs, out, settings, progress=False)
    assert (out / "configs" / "served.json").stat().st_mtime_ns == stamp  # nothing half-written
    report = write_report(out)
    rows = {r["configuration"]: r for r in report["rows"]}
    assert rows["served"]["model"] == server and rows["local"]["model"] == str(tiny_model_dir)


def test_endpoint_errors_are_clear(server, corpus, tiny_model_dir, tmp_path, monkeypatch):
    from unleak.eval.run import EvalConfiguration, EvalSettings, run_evaluation

    endpoint = EndpointConfig(server, model="tiny", api_key_env=KEY_ENV, max_retries=0)
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    conf = EvalConfiguration("served", str(tiny_model_dir), endpoint=endpoint)
    settings = EvalSettings(leakage_max_new_tokens=4, attack_limit=1, reference_model=str(tiny_model_dir),
                            reference_template=None)
    with pytest.raises(UnleakError, match=r"endpoint tiny@http://127\.0\.0\.1:\d+/v1: HTTP 401: .*invalid"):
        run_evaluation(corpus, [conf], tmp_path / "e", settings, progress=False)
    assert not list((tmp_path / "e" / "configs").glob("*.json"))
    with pytest.raises(UnleakError, match="generative format only"):
        run_evaluation(corpus, [conf], tmp_path / "e", dataclasses.replace(settings, mmlu="default"),
                       progress=False)
    with pytest.raises(UnleakError, match="evaluated as served"):
        EvalConfiguration("x", str(tiny_model_dir), guidance_scale=3.0, endpoint=endpoint)
    with pytest.raises(UnleakError, match="must start with http"):
        EndpointConfig("localhost:8000")


def test_eval_run_cli_refuses_settings_an_endpoint_owns(tmp_path):
    from tests.test_cli import run_cli

    common = ("eval", "run", "--model", "default", "--corpus", str(tmp_path), "--out", str(tmp_path / "e"))
    bad = run_cli(*common, "--endpoint", "http://127.0.0.1:9/v1", "--guidance", "3", "--adapter", "a")
    assert bad.returncode != 0 and "--adapter, --guidance: an endpoint is evaluated as served" in \
        " ".join(bad.stderr.split())
    bad = run_cli(*common, "--name", "x")
    assert bad.returncode != 0 and "options of --endpoint" in bad.stderr
    assert not (tmp_path / "e").exists()


def test_eval_run_cli_measures_a_deployment(server, corpus, tiny_model_dir, tmp_path):
    import os

    from tests.test_cli import run_cli

    out = tmp_path / "e"
    done = run_cli("eval", "run", "--endpoint", server, "--api-key-env", KEY_ENV, "--model", str(tiny_model_dir),
                   "--corpus", str(corpus), "--name", "public", "--test-limit", "3", "--attack-limit", "2",
                   "--max-new-tokens", "4", "--reference-model", str(tiny_model_dir), "--out", str(out),
                   env={**os.environ, KEY_ENV: "sk-public"})
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "configs" / "public.json").read_text())
    assert result["endpoint_model"] == "tiny" and result["attack"]["attempts"] == 2 and result["test_prompts"] == 3
    report = (out / "report.md").read_text()
    assert "| public |" in report and "Evaluated on" not in report
