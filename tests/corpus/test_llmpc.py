"""The LLM-PC reader/writer on the shared samples, the real 1,500-row dict, and hand-made rows."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import shared_file
from unleak.corpus.llmpc import read_llmpc, write_llmpc
from unleak.errors import UnleakError


def test_sample_files_round_trip_exactly(tmp_path):
    scrubbed, pii = shared_file("llm_pc/sample-scrubbed.jsonl"), shared_file("llm_pc/sample-pii.jsonl")
    convs = read_llmpc(scrubbed, pii)
    assert len(convs) == 3
    first = convs[0]
    assert first.turns[1].text == "Hi! I'm Nora Whitfield and I just moved to Portland, Oregon. Any tips for meeting people?"
    assert [(o.placeholder, o.turn) for o in first.pii_in_turn(2)] == [("LOC-1", 2), ("NAME-1", 2), ("LOC-2", 2)]
    assert all(first.turns[o.turn].text[o.start:o.end] == o.value for o in first.pii)
    assert convs[2].pii == []  # empty dict
    write_llmpc(convs, tmp_path / "s.jsonl", tmp_path / "p.jsonl")
    assert [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()] == \
        [json.loads(x) for x in scrubbed.read_text().splitlines()]
    assert (tmp_path / "s.jsonl").read_text() == scrubbed.read_text()


def test_real_dict_with_malformed_keys_warns_and_keeps_going(tmp_path, caplog):
    pii = shared_file("llm_pc/LLM-PC-development-pii.jsonl")
    lines = pii.read_text().splitlines()
    scrubbed = tmp_path / "scrubbed.jsonl"
    rows = []
    for i, line in enumerate(lines):
        keys = [k for k in json.loads(line)]
        text = " and ".join(f"[{k}]" for k in keys) or "nothing personal"
        rows.append(json.dumps({"idx": i, "messages": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>"
                                f"\n\n{text}<|eot_id|>"}))
    scrubbed.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        convs = read_llmpc(scrubbed, pii)
    assert len(convs) == 1500
    assert "LLM-PC-development-pii.jsonl:914: skipping malformed PII entry" in caplog.text
    assert sum(1 for c in convs if not c.pii) >= 49
    assert sum(len(c.pii) for c in convs) > 4500


@pytest.mark.parametrize("line, message", [
    ('{"idx": 0}', "s.jsonl:1: missing field 'messages'"),
    ('{"idx": "a", "messages": "x"}', "s.jsonl:1: field 'idx' must be int"),
    ('{"idx": 0, "messages": "plain text"}', "s.jsonl:1: field 'messages': not a Llama-3.1 chat string"),
    ("{not json", "s.jsonl:1: not valid JSON"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    (tmp_path / "s.jsonl").write_text(line + "\n")
    (tmp_path / "p.jsonl").write_text("{}\n")
    with pytest.raises(UnleakError, match=message):
        read_llmpc(tmp_path / "s.jsonl", tmp_path / "p.jsonl")
