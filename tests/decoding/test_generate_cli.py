"""`unleak generate` and `unleak.query` on the tiny model, through the real entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import unleak
from unleak.errors import UnleakError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unleak.cli", "generate", *args], capture_output=True,
                          text=True, timeout=300)


def test_json_rows_in_input_order_match_the_library(tiny_model_dir, tmp_path):
    rows = [{"prompt": "Hello there"},
            {"messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "Name a fruit."}]},
            {"prompt": "Count to three."}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("--model", str(tiny_model_dir), "--in", str(path), "--json", "--max-new-tokens", "6",
                  "--guidance-scale", "3", "--cfg-space", "log", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(got) == 3
    assert all(set(g) == {"text", "token_ids", "finish_reason", "guidance_scale", "cfg_space"} for g in got)
    assert all(g["guidance_scale"] == 3.0 and g["cfg_space"] == "log" for g in got)
    expected = unleak.query("Count to three.", model=str(tiny_model_dir), max_new_tokens=6, guidance_scale=3.0,
                            cfg_space="log", device="cpu")
    assert got[2]["text"] == expected


def test_streams_plain_text_for_one_prompt(tiny_model_dir):
    out = run_cli("--model", str(tiny_model_dir), "--prompt", "Hi", "--max-new-tokens", "5", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    expected = unleak.query("Hi", model=str(tiny_model_dir), max_new_tokens=5, device="cpu")
    assert out.stdout == expected + "\n"


@pytest.mark.parametrize("content, args, message", [
    ('{"prompt": "ok"}\nnot json\n', [], "in.jsonl:2: not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "x"}\n', [], "in.jsonl:2: missing field 'prompt' or 'messages'"),
    ('{"prompt": 3}\n', [], "in.jsonl:1: field 'prompt' must be a non-empty string"),
    ('{"prompt": "ok"}\n', ["--guidance-scale", "0"], "guidance_scale must be > 0"),
    ('{"prompt": "ok"}\n', ["--adapter", "/nonexistent/adapter"], "adapter not found"),
    ('{"prompt": "ok"}\n', ["--negative", "base"], "negative 'base' needs an adapter"),
    ('{"prompt": "ok"}\n', ["--negative", "leaky"], "negative must be one of adapter, base"),
])
def test_bad_input_exits_2_naming_the_problem(tiny_model_dir, tmp_path, content, args, message):
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    out = run_cli("--model", str(tiny_model_dir), "--in", str(path), "--device", "cpu", *args)
    assert out.returncode == 2
    assert message in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr


def test_query_rejects_unknown_settings_and_empty_prompts(tiny_model_dir):
    with pytest.raises(UnleakError, match="unknown setting"):
        unleak.query("hi", modle="x")
    with pytest.raises(UnleakError, match="empty prompt"):
        unleak.query("  ", model=str(tiny_model_dir), device="cpu")


def test_a_long_prompt_is_cut_once_per_branch_and_still_answered(tiny_model_dir, tmp_path):
    """The tiny model's context is 1,024 tokens: a 3,000-word prompt is cut from the left, and the warning
    comes once for the positive and once for the negative prompt (validation and decoding share the
    encoding), not once more per pass."""
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"prompt": "word " * 3000}) + "\n")
    out = run_cli("--model", str(tiny_model_dir), "--in", str(path), "--json", "--max-new-tokens", "4",
                  "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("truncated from the left") == 2
    assert json.loads(out.stdout)["finish_reason"] == "length"
