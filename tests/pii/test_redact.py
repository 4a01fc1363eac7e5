"""Detected spans replaced by a placeholder template, and `pii scan --keep/--redact`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unleak.errors import UnleakError
from unleak.pii import build_detector
from unleak.pii.redact import redact_spans
from unleak.pii.scan import scan_file


def test_redact_spans_by_hand():
    text = "Ann, call 555-201-3344 at 9 pm in North Paris."
    spans = [{"start": 0, "end": 3, "label": "PERSON", "text": "Ann"},
             {"start": 10, "end": 22, "label": "KNOWN_VALUE", "text": "555-201-3344"},
             {"start": 26, "end": 30, "label": "TIME", "text": "9 pm"},
             {"start": 34, "end": 45, "label": "GPE", "text": "North Paris"},
             {"start": 40, "end": 46, "label": "KNOWN_VALUE", "text": "Paris."}]  # overlaps the GPE: one placeholder
    names = {"LOC": "LOCATION"}
    assert redact_spans(text, spans, "[REDACTED {name}]", names, {"555-201-3344": "PHONE"}) == \
        "[REDACTED NAME], call [REDACTED PHONE] at [REDACTED TIME] in [REDACTED LOCATION]"
    # a known value the conversation does not type, and the placeholder field filled with the type
    assert redact_spans("x 12 y", [{"start": 2, "end": 4, "label": "KNOWN_VALUE", "text": "12"}], "<{placeholder}>") \
        == "x <PII> y"
    assert redact_spans(text, [], "[{type}]") == text


def test_scan_keeps_fields_and_redacts(tmp_path):
    src = tmp_path / "answers.jsonl"
    src.write_text(json.dumps({"id": 7, "meta": {"run": "a"}, "t": "Mail ann@site.org or call 555-201-3344."}) + "\n"
                   + json.dumps({"id": 8, "meta": None, "t": "Nothing private."}) + "\n")
    counts = scan_file(build_detector("patterns"), src, tmp_path / "o.jsonl", "t", keep=["id", "meta"],
                       redact="[REDACTED {name}]")
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [7, 8] and rows[0]["meta"] == {"run": "a"} and rows[1]["meta"] is None
    assert [r["count"] for r in rows] == [2, 0] and sum(counts.values()) == 2
    assert rows[0]["redacted"] == "Mail [REDACTED EMAIL ADDRESS] or call [REDACTED PHONE NUMBER]."
    assert rows[1]["redacted"] == "Nothing private."
    # without the options: entities and count only, as before
    scan_file(build_detector("patterns"), src, tmp_path / "plain.jsonl", "t")
    assert set(json.loads((tmp_path / "plain.jsonl").read_text().splitlines()[0])) == {"entities", "count"}


@pytest.mark.parametrize("keep,redact,message", [
    (["id", "lang"], None, "answers.jsonl:2: missing field 'lang'"),
    (["count"], None, "keep: count would be overwritten"),
    ([], "[{kind}]", "redact template '[{kind}]': only {name}, {type} and {placeholder}"),
])
def test_scan_refuses_bad_options_before_writing(tmp_path, keep, redact, message):
    src = tmp_path / "answers.jsonl"
    src.write_text(json.dumps({"id": 1, "lang": "en", "t": "a"}) + "\n" + json.dumps({"id": 2, "t": "b"}) + "\n")
    with pytest.raises(UnleakError) as err:
        scan_file(build_detector("patterns"), src, tmp_path / "o.jsonl", "t", keep=keep, redact=redact)
    assert message in str(err.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_scan_cli_keep_and_redact(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "t": "Call 555-201-3344 today."}) + "\n")
    base = [sys.executable, "-m", "unleak.cli", "pii", "scan", "--in", str(src), "--field", "t", "--detector",
            "patterns", "--out", str(tmp_path / "o.jsonl")]
    run = subprocess.run(base + ["--keep", "id", "--redact", "<{type}>"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert row["id"] == "a" and row["redacted"] == "Call <PHONE> today."
    bad = subprocess.run(base[:-1] + [str(tmp_path / "o2.jsonl"), "--keep", "id,user"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "in.jsonl:1: missing field 'user'" in bad.stderr, bad.stderr
    assert not (tmp_path / "o2.jsonl").exists()
