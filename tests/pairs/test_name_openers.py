"""Name-opener pairs: answers after a user's name, paired at their start against the answer opened with it."""

from __future__ import annotations

import json

import pytest

from unleak.config import CandidateConfig, PairsConfig
from unleak.corpus.model import Conversation, PIIOccurrence, Turn
from unleak.errors import UnleakError
from unleak.pairs.build import build_preference_pairs, redacted_continuation
from unleak.pairs.samples import (Sample, build_samples, first_name, lower_first, name_opener_samples,
                                  pair_stratum)
from unleak.pii import build_detector
from unleak.pii.known import conversation_values, known_value_spans


def _occ(turns: list[Turn], kind: str, value: str, turn: int) -> PIIOccurrence:
    start = turns[turn].text.index(value)
    return PIIOccurrence(kind, value, f"{kind}-1", turn, start, start + len(value))


def dialog() -> Conversation:
    turns = [Turn("system", "S"), Turn("user", "Hi. My router drops. I'm Mr. Dalton Rios."),
             Turn("assistant", "Sure! Restart it, Dalton, and call 555-201-3344."),
             Turn("user", "Thanks."), Turn("assistant", "I'm glad it helped."),
             Turn("user", "My wife Ann asks too."), Turn("assistant", "Ann, try the same.")]
    return Conversation("c1", turns, [_occ(turns, "NAME", "Mr. Dalton Rios", 1), _occ(turns, "NAME", "Dalton", 2),
                                      _occ(turns, "PHONE", "555-201-3344", 2), _occ(turns, "NAME", "Ann", 5),
                                      _occ(turns, "NAME", "Ann", 6)])


def test_redacted_continuation_of_a_name_opener():
    conv = dialog()
    first = name_opener_samples([conv], set())[0]
    assert redacted_continuation(first, conv, "[REDACTED {name}]", {"PHONE": "PHONE NUMBER"}) == (
        "[REDACTED NAME], sure! Restart it, [REDACTED NAME], and call [REDACTED PHONE NUMBER].")
    assert redacted_continuation(first, conv, "<{placeholder}>") == "<NAME-1>, sure! Restart it, <NAME-1>, and call <PHONE-1>."


def test_first_name_skips_titles_and_initials():
    assert first_name("Mr. Breandan Melvin") == "Breandan"
    assert first_name("Jamie-Leigh Leyden") == "Jamie-Leigh"
    assert first_name("J. R. Smith") == "Smith"
    assert first_name("Dr.") is None
    assert [lower_first(t) for t in ("Sure! Go.", "I'd go.", "I go.", "USA first.", "")] == [
        "sure! Go.", "I'd go.", "I go.", "USA first.", ""]


def test_name_opener_samples_open_each_answer_with_the_latest_users_name():
    conv = dialog()
    real = build_samples([conv])
    openers = name_opener_samples([conv], {s.id for s in real})
    # turn 2 and turn 4 follow "Mr. Dalton Rios"; turn 6 opens with its own PII ("Ann,"): build_samples has it
    assert [(s.turn, s.pii_value, s.prefix, s.target) for s in openers] == [
        (2, "Dalton", "", "Dalton, sure! Restart it, Dalton, and call 555-201-3344."),
        (4, "Dalton", "", "Dalton, I'm glad it helped."),  # "I'm" keeps its capital
    ]
    assert any(s.turn == 6 and s.prefix == "" for s in real)
    for s in openers:
        assert s.opener and s.role == "assistant" and s.messages == conv.messages()[:s.turn]
        assert Sample.from_dict(s.as_dict()) == s and s.as_dict()["opener"] == s.opener == "NAME-1"
        assert s.id not in {r.id for r in real}
        assert pair_stratum(s) == ("assistant", "NAME", "opening", "name opener")
    assert "opener" not in real[0].as_dict() and not Sample.from_dict(real[0].as_dict()).opener
    # without the taken ids the opening answer gets a synthetic sample too; a name only in assistant turns: none
    assert [s.turn for s in name_opener_samples([conv], set())] == [2, 4, 6]
    quiet = Conversation("c2", conv.turns, [o for o in conv.pii if conv.turns[o.turn].role == "assistant"])
    assert name_opener_samples([quiet], set()) == []


def test_pairs_build_adds_name_opener_pairs(corpus_dir, tmp_path):
    from unleak.corpus.store import load_split

    values = conversation_values(load_split(corpus_dir, "train"))
    redact = CandidateConfig(modes=("redact",))
    base = PairsConfig(candidate=redact, pii_candidates_as_rejected=False)
    plain = build_preference_pairs(corpus_dir, None, tmp_path / "plain", base, detector=build_detector("patterns"),
                                   progress=False)
    out = tmp_path / "openers"
    cfg = PairsConfig(candidate=redact, pii_candidates_as_rejected=False, name_openers=None)
    stats = build_preference_pairs(corpus_dir, None, out, cfg, detector=build_detector("patterns"), progress=False)
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    samples = {json.loads(x)["id"]: json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()}
    opener_rows = [r for r in rows if r["rejected_source"] == "name_opener"]
    assert plain["name_openers"] == 0 and stats["name_openers"] == len(opener_rows) > 3
    assert stats["pairs"] == plain["pairs"] + len(opener_rows)
    for r in opener_rows:
        s = samples[r["sample_id"]]
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert s["opener"] and s["prefix"] == "" and r["prompt"] == s["messages"]
        assert rejected == s["target"] and rejected.startswith(s["pii_value"] + ", ")
        # the same answer, its values redacted, opened with the name's placeholder where the rejected has the name
        assert chosen.startswith("[REDACTED NAME], ") and chosen[len("[REDACTED NAME]"):] != rejected[len(s["pii_value"]):]
        assert not known_value_spans(chosen, values[r["conversation_id"]])
    limited = build_preference_pairs(corpus_dir, None, tmp_path / "three",
                                     PairsConfig(candidate=redact, pii_candidates_as_rejected=False, name_openers=3),
                                     detector=build_detector("patterns"), progress=False)
    assert limited["name_openers"] == 3
    with pytest.raises(UnleakError, match="name_openers must be"):
        PairsConfig(name_openers=-1)
