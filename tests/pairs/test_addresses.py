"""Redacted answers without the name that addresses the reader (`PairsConfig.drop_addresses`)."""

from __future__ import annotations

import json
import re

import pytest

from unleak.config import CandidateConfig, PairsConfig
from unleak.corpus.model import Conversation, PIIOccurrence, Turn, addresses_reader
from unleak.errors import UnleakError
from unleak.pairs.build import build_preference_pairs, redacted_continuation
from unleak.pairs.samples import build_samples, name_opener_samples
from unleak.pii import build_detector
from unleak.pii.known import NAME_TYPES

ANSWER = "Sure! Dalton, restart it. Dear Dalton, call 555-201-3344. I, Dalton, agree; Dalton, go."
TEMPLATE, NAMES = "[REDACTED {name}]", {"PHONE": "PHONE NUMBER"}


def _occurrences(turns: list[Turn], turn: int, kind: str, value: str) -> list[PIIOccurrence]:
    text, out, at = turns[turn].text, [], 0
    while (at := text.find(value, at)) >= 0:
        out.append(PIIOccurrence(kind, value, f"{kind}-1", turn, at, at + len(value)))
        at += len(value)
    return out


def conversation() -> Conversation:
    turns = [Turn("system", "S"), Turn("user", "Hi, I'm Dalton. Dalton, me, asks: my router drops."),
             Turn("assistant", ANSWER), Turn("user", "Thanks."), Turn("assistant", "Glad it helped.")]
    return Conversation("c1", turns, [*_occurrences(turns, 1, "NAME", "Dalton"),
                                      *_occurrences(turns, 2, "NAME", "Dalton"),
                                      *_occurrences(turns, 2, "PHONE", "555-201-3344")])


def test_an_address_opens_the_text_or_a_sentence_and_a_comma_follows():
    conv = conversation()
    got = [addresses_reader(ANSWER, o) for o in conv.pii_in_turn(2)]
    # "Sure! Dalton," yes; "Dear Dalton," no; the phone: no comma after it; "I, Dalton," no; "; Dalton," no
    assert got == [True, False, False, False, False]
    assert addresses_reader("Dalton, go.", PIIOccurrence("NAME", "Dalton", "NAME-1", 0, 0, 6))
    assert addresses_reader("Go? Dalton , go.", PIIOccurrence("NAME", "Dalton", "NAME-1", 0, 4, 10)) is False


def test_redacted_text_leaves_out_addresses_of_the_given_types_and_capitalises_what_follows():
    conv = conversation()
    assert conv.redacted_text(2, TEMPLATE, type_names=NAMES, drop_addresses=NAME_TYPES) == (
        "Sure! Restart it. Dear [REDACTED NAME], call [REDACTED PHONE NUMBER]. I, [REDACTED NAME], agree; "
        "[REDACTED NAME], go.")
    assert conv.redacted_text(2, TEMPLATE, type_names=NAMES) == (
        "Sure! [REDACTED NAME], restart it. Dear [REDACTED NAME], call [REDACTED PHONE NUMBER]. I, [REDACTED NAME], "
        "agree; [REDACTED NAME], go.")
    # the answer's opening address: nothing of it is left, the next word starts the answer
    opening = Conversation("c2", [Turn("user", "Hi"), Turn("assistant", "Dalton, Dr. Reed, call 555-201-3344.")])
    opening.pii.extend([PIIOccurrence("NAME", "Dalton", "NAME-1", 1, 0, 6),
                        PIIOccurrence("NAME", "Dr. Reed", "NAME-2", 1, 8, 16),
                        PIIOccurrence("PHONE", "555-201-3344", "PHONE-1", 1, 23, 35)])
    assert opening.redacted_text(1, "<{type}>", drop_addresses=NAME_TYPES) == "<NAME>, call <PHONE>."
    # only the types given: a phone that opens a sentence is never an address
    assert conv.redacted_text(2, "<{type}>", drop_addresses={"PHONE"}) == conv.redacted_text(2, "<{type}>")


def test_redacted_continuation_drops_addresses_after_the_prefix_in_assistant_turns_only():
    conv = conversation()
    samples = build_samples([conv], roles=("assistant", "user"))
    address = next(s for s in samples if s.role == "assistant" and s.prefix == "Sure!")
    assert redacted_continuation(address, conv, TEMPLATE, NAMES, drop_addresses=True) == (
        " Restart it. Dear [REDACTED NAME], call [REDACTED PHONE NUMBER]. I, [REDACTED NAME], agree; "
        "[REDACTED NAME], go.")
    assert redacted_continuation(address, conv, TEMPLATE, NAMES).startswith(" [REDACTED NAME], restart it.")
    # a user's own "Dalton, me, asks" keeps its placeholder: the option is about what the assistant writes
    user = next(s for s in samples if s.role == "user" and s.prefix.startswith("Hi, I'm Dalton."))
    assert redacted_continuation(user, conv, TEMPLATE, NAMES, drop_addresses=True) == \
        redacted_continuation(user, conv, TEMPLATE, NAMES) == " [REDACTED NAME], me, asks: my router drops."
    # a name-opener sample's chosen side is the answer as written, redacted, not opened with the placeholder
    opener = next(s for s in name_opener_samples([conv], set()) if s.turn == 4)
    assert opener.target == "Dalton, glad it helped."
    assert redacted_continuation(opener, conv, TEMPLATE, NAMES, drop_addresses=True) == "Glad it helped."
    assert redacted_continuation(opener, conv, TEMPLATE, NAMES) == "[REDACTED NAME], glad it helped."


def test_pairs_build_with_drop_addresses(corpus_dir, tmp_path):
    redact = CandidateConfig(modes=("redact",))
    common = dict(candidate=redact, pii_candidates_as_rejected=False, name_openers=None)
    runs, stats = {}, {}
    for drop in (False, True):
        out = tmp_path / str(drop)
        stats[drop] = build_preference_pairs(corpus_dir, None, out, PairsConfig(**common, drop_addresses=drop),
                                             detector=build_detector("patterns"), progress=False)
        runs[drop] = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    placed, dropped = runs[False], runs[True]
    # the same pairs, rejected sides as they were; the chosen sides differ where the answer addressed the reader
    assert [(r["sample_id"], r["rejected"]) for r in placed] == [(r["sample_id"], r["rejected"]) for r in dropped]
    changed = [(a, b) for a, b in zip(placed, dropped) if a["chosen"] != b["chosen"]]
    assert len(changed) > 3
    # the samples whose chosen side lost an address, counted (each changed pair is one of theirs)
    assert stats[False]["addresses_dropped"] == 0
    assert stats[True]["addresses_dropped"] == len({a["sample_id"] for a, _ in changed})
    with pytest.raises(UnleakError, match="drop_addresses shapes the 'redact' candidates"):
        PairsConfig(candidate=CandidateConfig(modes=("chat",)), drop_addresses=True)
    address = re.compile(r"(?:^|[.!?] )\[REDACTED NAME\], ")  # the placeholder addressing the reader
    for a, b in changed:
        before, after = a["chosen"][0]["content"], b["chosen"][0]["content"]
        assert address.search(before) and not address.search(after) and len(after) < len(before)
    assert not any(address.search(r["chosen"][0]["content"]) for r in dropped)
    for r in dropped:
        if r["rejected_source"] == "name_opener":  # the answer as written: no placeholder where the name was
            assert r["chosen"][0]["content"][:1].isupper()
