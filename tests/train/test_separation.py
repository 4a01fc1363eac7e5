"""`unleak train separation`: whether a model tells the two system prompts apart, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unleak.config import LoraSettings, OrpoSettings, PromptConfig
from unleak.errors import UnleakError
from unleak.pairs.build import cfg_variant
from unleak.train.separation import separation_of_files, unswapped_pairs

PAIRS = [
    {"prompt": [{"role": "user", "content": f"Who lives at number {i}?"}],
     "chosen": [{"role": "assistant", "content": "I cannot share that."}],
     "rejected": [{"role": "assistant", "content": f"John Smith {i} lives there, call 555-01{i}."}],
     "mode": "redact"}
    for i in range(4)
]
KEEP = {"prompt": [{"role": "user", "content": "Explain rivers in a few sentences."}],
        "chosen": [{"role": "assistant", "content": "Rivers carry water to the sea."}],
        "rejected": [{"role": "assistant", "content": "[REDACTED NAME] carry water to [REDACTED LOC]."}],
        "mode": "keep"}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    return {"plain": write(tmp_path / "pairs.jsonl", PAIRS),
            "cfg": write(tmp_path / "pairs_cfg.jsonl", cfg_variant(PAIRS, PromptConfig()))}


def test_cfg_training_separates_the_prompts_and_plain_training_does_not(tiny_model_dir, files, tmp_path):
    """ORPO on the CFG variant (each pair again under the negative prompt, sides swapped) teaches the model
    to prefer the PII-free answer under the positive prompt and the PII answer under the negative one; ORPO
    on the plain pairs teaches it to prefer the PII-free answer under both, so guidance has little to
    amplify. Measured here: separation ~7.6 and ~0.4 (6 epochs at lr 5e-3, LoRA seeded)."""
    from unleak.train.orpo import train_orpo

    settings = OrpoSettings(epochs=6, learning_rate=5e-3, lora=LoraSettings(r=8, alpha=16), save_per_epoch=False)
    result = {}
    for variant, pairs in files.items():
        adapter = train_orpo(str(tiny_model_dir), pairs, tmp_path / variant, settings, quiet=True)
        result[variant] = separation_of_files(str(tiny_model_dir), files["plain"], adapter=str(adapter),
                                              device="cpu")["redaction"]
    cfg, plain = result["cfg"], result["plain"]
    assert cfg["positive"]["prefers_chosen"] == 1.0 and cfg["negative"]["prefers_chosen"] == 0.0, cfg
    assert cfg["positive"]["mean_log_odds"] > 1 > -1 > cfg["negative"]["mean_log_odds"], cfg
    assert cfg["separation"] > 4, cfg
    assert plain["positive"]["prefers_chosen"] == plain["negative"]["prefers_chosen"] == 1.0, plain
    assert min(plain["positive"]["mean_log_odds"], plain["negative"]["mean_log_odds"]) > 1, plain
    assert abs(plain["separation"]) < cfg["separation"] / 4, (plain, cfg)


def test_a_cfg_file_is_read_as_its_unswapped_pairs_and_batching_changes_nothing(tiny_model_dir, files, tmp_path):
    rows = [json.loads(line) for line in files["cfg"].read_text().splitlines()]
    assert [r["chosen"] for r in unswapped_pairs(rows)] == [p["chosen"] for p in PAIRS]
    model = str(tiny_model_dir)
    from_plain = separation_of_files(model, files["plain"], device="cpu", batch_size=1)
    from_cfg = separation_of_files(model, files["cfg"], device="cpu", batch_size=8)
    for side in ("positive", "negative"):
        assert from_cfg["redaction"][side]["mean_log_odds"] == pytest.approx(
            from_plain["redaction"][side]["mean_log_odds"], abs=1e-3)
    assert from_plain["redaction"]["pairs"] == 4 and "keep" not in from_plain
    assert from_plain["redaction"]["separation"] == pytest.approx(
        from_plain["redaction"]["positive"]["mean_log_odds"] - from_plain["redaction"]["negative"]["mean_log_odds"],
        abs=1e-3)
    mixed = separation_of_files(model, write(tmp_path / "mixed.jsonl", PAIRS + [KEEP]), device="cpu")
    assert mixed["keep"]["pairs"] == 1 and "separation" not in mixed["keep"]
    assert mixed["redaction"] == from_plain["redaction"]  # keep pairs are reported apart
    assert separation_of_files(model, files["plain"], device="cpu", limit=2)["redaction"]["pairs"] == 2
    with pytest.raises(UnleakError, match="limit must be >= 1"):
        separation_of_files("no/such-model", files["plain"], limit=0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unleak.cli", "train", "separation", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_writes_the_result_and_refuses_a_bad_file_before_loading_a_model(tiny_model_dir, files, tmp_path):
    out = tmp_path / "sep.json"
    done = run_cli("--model", str(tiny_model_dir), "--pairs", str(files["plain"]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == json.loads(done.stdout)
    assert json.loads(done.stdout)["redaction"]["pairs"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({**PAIRS[1], "chosen": "text"}) + "\n")
    failed = run_cli("--model", "no/such-model", "--pairs", str(bad), "--out", str(tmp_path / "none.json"))
    assert failed.returncode == 2
    assert f"{bad}:2" in failed.stderr and "'chosen'" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "none.json").exists()
    negative_only = write(tmp_path / "negative.jsonl", [r for r in cfg_variant(PAIRS, PromptConfig())
                                                         if r["system"] == "negative"])
    failed = run_cli("--model", "no/such-model", "--pairs", str(negative_only))
    assert failed.returncode == 2 and "no pair under the positive prompt" in failed.stderr
