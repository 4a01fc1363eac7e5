"""Preference pairs: samples per PII location, modes, verification, CFG variant, resume, generators, TRL."""

from __future__ import annotations

import json
from collections import Counter
import os
import signal
import subprocess
import sys
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from unleak.config import CandidateConfig, GuidanceConfig, PairsConfig, PromptConfig
from unleak.corpus.model import Conversation, PIIOccurrence, Turn
from unleak.corpus.store import save_corpus, split_corpus
from unleak.corpus.synth import synthesize_corpus
from unleak.decoding.generator import GenerationRequest
from unleak.errors import UnleakError
from unleak.pairs.build import (build_preference_pairs, candidate_answer, cfg_variant,
                                is_repetitive, mode_request, oversample_strata, redacted_continuation)
from unleak.pii.known import conversation_values, known_value_spans
from unleak.pairs.generators import CandidateRequest, LocalCandidateGenerator, OpenAICandidateGenerator
from unleak.pairs.samples import build_samples, limit_samples, opening_stratum, pair_stratum
from unleak.pii import build_detector
from unleak.serve.background import live_server


def conversation() -> Conversation:
    turns = [
        Turn("user", "Hi, I am Ann Lee, phone 555-201-3344."),
        Turn("assistant", "Hello Ann Lee! I will call 555-201-3344 tomorrow."),
        Turn("user", "Thanks."),
        Turn("assistant", "You are welcome."),
    ]
    u, a = turns[0].text, turns[1].text
    return Conversation("c1", turns, [
        PIIOccurrence("NAME", "Ann Lee", "NAME-1", 0, u.index("Ann"), u.index("Ann") + 7),
        PIIOccurrence("PHONE", "555-201-3344", "PHONE-1", 0, u.index("555"), u.index("555") + 12),
        PIIOccurrence("NAME", "Ann Lee", "NAME-1", 1, a.index("Ann"), a.index("Ann") + 7),
        PIIOccurrence("PHONE", "555-201-3344", "PHONE-1", 1, a.index("555"), a.index("555") + 12),
    ])


def test_samples_one_per_assistant_pii_with_prefix_and_target():
    samples = build_samples([conversation()])
    assert [(s.pii_type, s.prefix, s.target) for s in samples] == [
        ("NAME", "Hello", " Ann Lee! I will call 555-201-3344 tomorrow."),
        ("PHONE", "Hello Ann Lee! I will call", " 555-201-3344 tomorrow."),
    ]
    s = samples[0]
    assert s.messages == [{"role": "user", "content": "Hi, I am Ann Lee, phone 555-201-3344."}]  # PII left in
    assert s.original_answer == "Hello Ann Lee! I will call 555-201-3344 tomorrow."
    # the space before the value stays with it: the prompt never ends in a lone space token
    assert s.prompt_messages()[-1] == {"role": "assistant", "content": "Hello"}
    for x in build_samples(synthesize_corpus(12, seed=1)):
        assert x.prefix == x.prefix.rstrip() and x.pii_value in x.target and not x.target.strip().startswith(" ")
    # the same conversation twice: prompts coincide, kept once
    twin = Conversation("c2", conversation().turns, conversation().pii)
    assert len(build_samples([conversation(), twin])) == 2


def test_user_turn_samples_continue_the_users_message():
    conv = conversation()
    conv = Conversation("c1", [Turn("system", "S")] + conv.turns,
                        [PIIOccurrence(o.type, o.value, o.placeholder, o.turn + 1, o.start, o.end) for o in conv.pii])
    assert build_samples([conversation()], roles=("user",)) == []  # no turn before it: no prompt to pair
    user = build_samples([conv], roles=("user",))
    assert [(s.role, s.pii_type, s.prefix, s.target) for s in user] == [
        ("user", "NAME", "Hi, I am", " Ann Lee, phone 555-201-3344."),
        ("user", "PHONE", "Hi, I am Ann Lee, phone", " 555-201-3344."),
    ]
    assert user[0].prompt_messages() == [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi, I am"}]
    assert type(user[0]).from_dict(user[0].as_dict()) == user[0]
    both = build_samples([conv], roles=("assistant", "user"))
    assert [s.role for s in both] == ["user", "user", "assistant", "assistant"]
    assert [s.id for s in both if s.role == "assistant"] == [s.id for s in build_samples([conv])]
    # a user message that starts with its PII has nothing to continue: no sample
    first = Conversation("c3", [Turn("system", "S"), Turn("user", "Ann Lee here."), Turn("assistant", "Hi.")],
                         [PIIOccurrence("NAME", "Ann Lee", "NAME-1", 1, 0, 7)])
    assert build_samples([first], roles=("user",)) == []


def test_limit_is_seeded_and_stratified():
    convs = synthesize_corpus(30, seed=3)
    samples = build_samples(convs)
    picked = limit_samples(samples, 11, seed=0)
    assert len(picked) == 11 and picked == limit_samples(samples, 11, seed=0)
    assert len({s.pii_type for s in picked}) >= min(11, len({s.pii_type for s in samples}))


def test_pairs_limit_keeps_answers_that_open_with_their_pii():
    samples = build_samples(synthesize_corpus(30, seed=3))
    openings = [s for s in samples if not s.prefix.strip()]
    assert len(openings) == 4 and len(samples) == 147
    strata = {opening_stratum(s) for s in samples}
    assert len(strata) == 12  # 11 types, and names that open an answer
    for seed in range(5):  # by type alone a limit of 12 picks none of the 4; by these strata always one
        assert not any(not s.prefix.strip() for s in limit_samples(samples, 12, seed=seed))
        picked = limit_samples(samples, 12, seed=seed, stratum=opening_stratum)
        assert sum(not s.prefix.strip() for s in picked) == 1 and {opening_stratum(s) for s in picked} == strata


def test_mode_requests():
    s = build_samples([conversation()])[1]
    p = PromptConfig()
    chat = mode_request(s, "chat", p, "Start with: {prefix}", 1)
    assert chat.messages[0] == {"role": "system", "content": p.generator} and not chat.continue_final
    assert chat.messages[1:] == s.messages
    nudge = mode_request(s, "nudge", p, "x", 1)
    assert nudge.messages[-1]["content"] == f"{p.nudge_prefix} Hi, I am Ann Lee, phone 555-201-3344."
    comp = mode_request(s, "completion", p, "x", 1)
    assert comp.continue_final and comp.messages[-1] == {"role": "assistant", "content": "Hello Ann Lee! I will call"}
    sw = mode_request(s, "start_with", p, 'Start with: "{prefix}"', 1)
    assert sw.messages[-1]["content"].endswith('Start with: "Hello Ann Lee! I will call"')


def test_candidate_answer_rules():
    s = build_samples([conversation()])[1]
    assert candidate_answer(s, "completion", " you soon.") == "Hello Ann Lee! I will call you soon."
    assert candidate_answer(s, "completion", "  ") is None
    assert candidate_answer(s, "chat", "  Sure.\n") == "Sure."
    assert candidate_answer(s, "start_with", "hello  ann lee! i will call you.") is not None
    assert candidate_answer(s, "start_with", "Hi there.") is None


class ScriptedGenerator:
    """Answers with a phone number in chat mode and PII-free text otherwise (a deterministic generator)."""

    name = "scripted"

    def __init__(self):
        self.calls = 0

    def generate(self, requests: list[CandidateRequest]) -> list[str]:
        self.calls += len(requests)
        out = []
        for r in requests:
            if r.continue_final:
                out.append("you when it suits you.")
            elif "(Do not use any personal data" in r.messages[-1]["content"]:
                out.append(f"I can help with that without details ({r.seed % 3}).")
            else:
                out.append("Call me at 555-777-1234.")
        return out


def test_build_pairs_verifies_and_writes_both_variants(corpus_dir, tmp_path):
    out = tmp_path / "pairs"
    cfg = PairsConfig(candidate=CandidateConfig(modes=("chat", "nudge"), candidates=2, max_tries=2))
    gen = ScriptedGenerator()
    stats = build_preference_pairs(corpus_dir, gen, out, cfg, detector=build_detector("patterns"), progress=False)
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    test_ids = set(json.loads((corpus_dir / "split.json").read_text())["test"])
    assert rows and not {r["conversation_id"] for r in rows} & test_ids  # train split only
    assert stats["with_chosen"] == stats["samples"] and stats["failed"] == 0
    assert stats["by_mode"]["chat"]["rejection_rate"] == 1.0 and stats["by_mode"]["nudge"]["rejection_rate"] == 0.0
    for r in rows:
        assert r["chosen"][0]["role"] == "assistant" and "555-777" not in r["chosen"][0]["content"]
        assert r["prompt"][-1]["role"] == "user"
    originals = [r for r in rows if r["rejected_source"] == "original"]
    from_candidates = [r for r in rows if r["rejected_source"] == "candidate:chat"]
    assert originals and from_candidates
    assert all(r["rejected"][0]["content"] == "Call me at 555-777-1234." for r in from_candidates)
    cfg_rows = [json.loads(x) for x in (out / "pairs_cfg.jsonl").read_text().splitlines()]
    assert len(cfg_rows) == 2 * len(rows)
    pos, neg = cfg_rows[0], cfg_rows[1]
    assert pos["prompt"][0]["content"] == PromptConfig().positive and pos["chosen"] == rows[0]["chosen"]
    assert neg["prompt"][0]["content"] == PromptConfig().negative
    assert neg["chosen"] == rows[0]["rejected"] and neg["rejected"] == rows[0]["chosen"]
    # rerun: everything comes from the cache
    calls = gen.calls
    build_preference_pairs(corpus_dir, gen, out, cfg, detector=build_detector("patterns"), progress=False)
    assert gen.calls == calls


def test_samples_without_pii_free_candidate_are_reported(corpus_dir, tmp_path):
    out = tmp_path / "pairs"
    cfg = PairsConfig(candidate=CandidateConfig(modes=("chat",), candidates=1, max_tries=3))
    gen = ScriptedGenerator()
    stats = build_preference_pairs(corpus_dir, gen, out, cfg, detector=build_detector("patterns"), progress=False)
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert stats["pairs"] == 0 and len(failed) == stats["samples"] > 0
    assert failed[0]["tries"] == 3 and failed[0]["reasons"] == {"pii": 3}
    assert gen.calls == 3 * stats["samples"]


def test_redacted_continuation_replaces_the_values_after_the_prefix():
    conv = conversation()
    name, phone = build_samples([conv])
    assert redacted_continuation(name, conv, "[{type}]") == " [NAME]! I will call [PHONE] tomorrow."
    # the prefix is the dialog's own text: a value in it stays, only the continuation is redacted
    assert redacted_continuation(phone, conv, "<{placeholder}>") == " <PHONE-1> tomorrow."
    assert candidate_answer(phone, "redact", " <PHONE-1> tomorrow.") == "Hello Ann Lee! I will call <PHONE-1> tomorrow."
    assert redacted_continuation(name, conv, "[REDACTED {name}]", {"PHONE": "PHONE NUMBER"}) == \
        " [REDACTED NAME]! I will call [REDACTED PHONE NUMBER] tomorrow."
    with pytest.raises(UnleakError, match="redact_template"):
        CandidateConfig(redact_template="[{kind}]")
    with pytest.raises(UnleakError, match="redact_type_names"):
        CandidateConfig(redact_type_names={"LOC": 3})
    with pytest.raises(UnleakError, match="not drawn from a generator"):
        mode_request(phone, "redact", PromptConfig(), "x", 1)


def test_default_redaction_is_not_pii_to_the_original_profile():
    """spaCy labels abbreviations like "LOC" and "SSN" as organisations: the default names spell them out, so a
    redacted answer is not rejected (nor counted as leaking) for its own placeholders."""
    from unleak.config import PIIConfig
    from unleak.pii import detector_for_profile

    detector = detector_for_profile(PIIConfig(profile="original"))
    convs = synthesize_corpus(60, seed=5)
    by_id = {c.id: c for c in convs}
    samples = build_samples(convs)
    cc = CandidateConfig()
    texts = [redacted_continuation(x, by_id[x.conversation_id], cc.redact_template, cc.redact_type_names)
             for x in samples]
    assert {"LOC", "SSN"} <= {x.pii_type for x in samples}
    found = [sp.text for row in detector.detect(texts) for sp in row]
    assert not [t for t in found if "REDACTED" in t or t.isupper()], found
    abbreviated = [redacted_continuation(x, by_id[x.conversation_id], "[REDACTED {type}]")
                   for x in samples if x.pii_type in ("LOC", "SSN")]
    assert any(sp.text in ("LOC", "SSN") for row in detector.detect(abbreviated) for sp in row)


def test_redact_mode_needs_no_generator_and_checks_its_candidates(corpus_dir, tmp_path):
    from unleak.corpus.store import load_split

    train = load_split(corpus_dir, "train")
    values = conversation_values(train)
    out = tmp_path / "pairs"
    cfg = PairsConfig(candidate=CandidateConfig(modes=("redact",), max_tries=3), pii_candidates_as_rejected=False)
    stats = build_preference_pairs(corpus_dir, None, out, cfg, detector=build_detector("patterns"), progress=False)
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert stats["generator"] == "none" and stats["by_mode"]["redact"]["candidates"] == stats["samples"]
    assert rows and len(rows) == stats["with_chosen"]
    samples = {json.loads(x)["id"]: json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()}
    for r in rows:
        s = samples[r["sample_id"]]
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert rejected == s["prefix"] + s["target"] and chosen.startswith(s["prefix"]) and chosen != rejected
        continuation = chosen[len(s["prefix"]):]
        assert "[" in continuation and not known_value_spans(continuation, values[r["conversation_id"]])
    # a template the detector flags as PII is rejected like any PII-bearing candidate
    flagged = PairsConfig(candidate=CandidateConfig(modes=("redact",), redact_template="call 555-000-1111"),
                          pii_candidates_as_rejected=False)
    bad = build_preference_pairs(corpus_dir, None, tmp_path / "flagged", flagged, detector=build_detector("patterns"),
                                 progress=False)
    assert bad["pairs"] == 0 and bad["failed"] == bad["samples"]
    with pytest.raises(UnleakError, match="need a generator"):
        build_preference_pairs(corpus_dir, None, tmp_path / "x", PairsConfig(candidate=CandidateConfig(
            modes=("redact", "nudge"))), detector=build_detector("patterns"), progress=False)



def test_redact_mode_redacts_what_the_detector_still_finds(tmp_path):
    """An answer holding an entity that is not an annotated value of its turn (a support e-mail, the user's
    surname repeated) has no PII-free `redact` candidate unless those are replaced too (`redact_detected`)."""
    from unleak.corpus.store import load_split

    convs = []
    for i, name in enumerate(["Ann Lee", "Bo Chan"]):
        user, answer = f"I am {name}.", f"Hello {name}! Write to help@example.com, {name.split()[1]}."
        convs.append(Conversation(str(i), [Turn("user", user), Turn("assistant", answer)], [
            PIIOccurrence("NAME", name, "NAME-1", 0, 5, 5 + len(name)),
            PIIOccurrence("NAME", name, "NAME-1", 1, 6, 6 + len(name))]))
    d = tmp_path / "corpus"
    save_corpus(d, convs, {"generator": "test"})
    split_corpus(d, 0.5, seed=0)
    (train,) = load_split(d, "train")
    surname = train.pii[0].value.split()[1]
    detector = build_detector("patterns")
    off = build_preference_pairs(d, None, tmp_path / "off", PairsConfig(candidate=CandidateConfig(
        modes=("redact",), redact_detected=False)), detector=detector, progress=False)
    assert off["pairs"] == 0 and off["failed"] == 1 and off["by_mode"]["redact"]["redacted_detected"] == 0
    on = build_preference_pairs(d, None, tmp_path / "on", PairsConfig(candidate=CandidateConfig(modes=("redact",))),
                                detector=detector, progress=False)
    (row,) = [json.loads(x) for x in (tmp_path / "on" / "pairs.jsonl").read_text().splitlines()]
    assert row["chosen"][0]["content"] == "Hello [REDACTED NAME]! Write to [REDACTED EMAIL ADDRESS], [REDACTED NAME]."
    assert row["rejected"][0]["content"] == train.turns[1].text and surname in row["rejected"][0]["content"]
    assert on["failed"] == 0 and on["by_mode"]["redact"]["redacted_detected"] == 1

def test_pairs_build_draws_its_limit_with_the_opening_strata(tmp_path):
    d = tmp_path / "corpus"
    save_corpus(d, synthesize_corpus(30, seed=3), {"generator": "test"})
    split_corpus(d, 0.25, seed=0)
    cfg = PairsConfig(candidate=CandidateConfig(modes=("redact",), max_tries=1), pii_candidates_as_rejected=False,
                      limit=12)
    build_preference_pairs(d, None, tmp_path / "pairs", cfg, detector=build_detector("patterns"), progress=False)
    picked = [json.loads(x)["prefix"] for x in (tmp_path / "pairs" / "samples.jsonl").read_text().splitlines()]
    assert len(picked) == 12 and sum(not p.strip() for p in picked) == 1

def test_oversample_strata_by_hand():
    pairs = [{"id": i, "k": k} for i, k in enumerate("aaaabbc")]
    out = oversample_strata(pairs, lambda p: p["k"], 3)
    # a: 4 >= 3 untouched; b: 2 -> one copy of its first; c: 1 -> two copies of its only pair
    assert out[:7] == pairs
    assert out[7:] == [{"id": 4, "k": "b", "copy": 1}, {"id": 6, "k": "c", "copy": 1}, {"id": 6, "k": "c", "copy": 2}]
    assert [p["id"] for p in oversample_strata(pairs, lambda p: p["k"], 5)[7:]] == [0, 4, 5, 4, 6, 6, 6, 6]
    assert oversample_strata(pairs, lambda p: p["k"], 0) == pairs == oversample_strata(pairs, lambda p: p["k"], 1)


def test_pairs_build_oversamples_rare_strata(corpus_dir, tmp_path):
    redact = CandidateConfig(modes=("redact",))
    base = PairsConfig(candidate=redact, user_turns=None, pii_candidates_as_rejected=False)
    plain = build_preference_pairs(corpus_dir, None, tmp_path / "plain", base, detector=build_detector("patterns"),
                                   progress=False)
    cfg = PairsConfig(candidate=redact, user_turns=None, pii_candidates_as_rejected=False, min_stratum_pairs=6)
    stats = build_preference_pairs(corpus_dir, None, tmp_path / "over", cfg, detector=build_detector("patterns"),
                                   progress=False)
    samples = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "over" / "samples.jsonl").read_text().splitlines()}
    rows = [json.loads(x) for x in (tmp_path / "over" / "pairs.jsonl").read_text().splitlines()]
    originals = [r for r in rows if "copy" not in r]
    assert stats["oversampled"] == len(rows) - len(originals) > 0 and plain["oversampled"] == 0
    assert len(originals) == plain["pairs"] and stats["pairs"] == len(rows)
    def key(r):
        s = samples[r["sample_id"]]
        return (s["role"], s["pii_type"]) + (("opening",) if not s["prefix"].strip() else ())
    before, after = Counter(key(r) for r in originals), Counter(key(r) for r in rows)
    assert any(n < 6 for n in before.values())
    assert after == {k: max(n, 6) for k, n in before.items()}
    assert {key(r) for r in rows if "copy" in r} == {k for k, n in before.items() if n < 6}
    cfg_rows = (tmp_path / "over" / "pairs_cfg.jsonl").read_text().splitlines()
    assert len(cfg_rows) == 2 * len(rows)
    from unleak.pairs.samples import Sample
    assert pair_stratum(Sample.from_dict(next(iter(samples.values()))))[0] in ("assistant", "user")
    with pytest.raises(UnleakError, match="min_stratum_pairs"):
        PairsConfig(min_stratum_pairs=-1)


def test_user_turn_pairs_redact_the_users_message(corpus_dir, tmp_path):
    from unleak.corpus.store import load_split

    values = conversation_values(load_split(corpus_dir, "train"))
    redact = CandidateConfig(modes=("redact",))
    out = tmp_path / "pairs"
    stats = build_preference_pairs(corpus_dir, None, out, PairsConfig(candidate=redact, user_turns=5,
                                                                     pii_candidates_as_rejected=False),
                                   detector=build_detector("patterns"), progress=False)
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    samples = {json.loads(x)["id"]: json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()}
    user_rows = [r for r in rows if r["role"] == "user"]
    assert stats["by_role"]["user"]["samples"] == 5 and stats["by_role"]["user"]["pairs"] == len(user_rows) > 0
    assert stats["by_role"]["assistant"]["samples"] == stats["samples"] - 5
    for r in user_rows:
        s = samples[r["sample_id"]]
        assert r["prompt"] == s["messages"] and r["chosen"][0]["role"] == r["rejected"][0]["role"] == "user"
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert rejected == s["prefix"] + s["target"] and chosen.startswith(s["prefix"]) and s["prefix"]
        assert "[REDACTED" in chosen and not known_value_spans(chosen[len(s["prefix"]):],
                                                               values[r["conversation_id"]])
    assert all(r["role"] == "assistant" for r in rows if r not in user_rows)
    with pytest.raises(UnleakError, match="need the 'redact' candidate mode"):
        PairsConfig(candidate=CandidateConfig(modes=("nudge",)), user_turns=None)
    with pytest.raises(UnleakError, match="user_turns must be"):
        PairsConfig(candidate=redact, user_turns=-1)


class EchoGenerator:
    """Repeats the user's turns (which hold the conversation's PII) in nudge mode; PII-free in completion mode."""

    name = "echo"

    def generate(self, requests: list[CandidateRequest]) -> list[str]:
        return [" and then it is done." if r.continue_final else
                "You said: " + " ".join(m["content"] for m in r.messages if m["role"] == "user") for r in requests]


class NoDetector:
    name = "none"

    def detect(self, texts):
        return [[] for _ in texts]


def test_candidates_repeating_known_values_are_never_chosen(corpus_dir, tmp_path):
    from unleak.corpus.store import load_split

    values = conversation_values(load_split(corpus_dir, "train"))
    cfg = CandidateConfig(modes=("nudge", "completion"), candidates=1, max_tries=1)
    chosen = {}
    for check in (False, True):
        out = tmp_path / f"pairs-{check}"
        build_preference_pairs(corpus_dir, EchoGenerator(), out, PairsConfig(candidate=cfg, reject_known_values=check),
                               detector=NoDetector(), progress=False)
        chosen[check] = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    def repeats_values(row):  # a completion's prefix is the dialog's own text: only the continuation counts
        answer = row["chosen"][0]["content"]
        answer = answer[answer.index(" and then"):] if row["mode"] == "completion" else answer
        return bool(known_value_spans(answer, values[row["conversation_id"]]))

    assert [r for r in chosen[False] if repeats_values(r)]  # the detector alone let echoed values through
    assert chosen[True] and not [r for r in chosen[True] if repeats_values(r)]
    assert len(chosen[True]) < len(chosen[False])


class LoopingGenerator:
    """Completions that loop on even seeds and read as prose on odd ones."""

    name = "looping"

    def generate(self, requests: list[CandidateRequest]) -> list[str]:
        return ["a party in May. I plan a party in May. I plan a party in May." if r.seed % 2 == 0
                else "your friend will be glad to hear from you again." for r in requests]


def test_looping_candidates_are_unusable_with_max_repetition(corpus_dir, tmp_path):
    """'a party in May. I plan a party in May. I plan a party in May.': 16 words, 13 word 4-grams; the second
    'I plan a party in May.' repeats all 6 of its 4-grams and 'a party in May.' the first one's: 7 / 13 = 0.54
    > 0.2. The prose repeats none."""
    looping = "a party in May. I plan a party in May. I plan a party in May."
    assert is_repetitive(looping, 0.53) and not is_repetitive(looping, 0.54)
    assert not is_repetitive("your friend will be glad to hear from you again.", 0.0)
    cfg = CandidateConfig(modes=("completion",), candidates=2, max_tries=1, max_repetition=0.2)
    stats = build_preference_pairs(corpus_dir, LoopingGenerator(), tmp_path / "pairs",
                                   PairsConfig(candidate=cfg), detector=NoDetector(), progress=False)
    rows = [json.loads(x) for x in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert rows and all("glad to hear" in r["chosen"][0]["content"] for r in rows)
    assert 0 < stats["by_mode"]["completion"]["repetitive"] <= stats["by_mode"]["completion"]["unusable"]
    with pytest.raises(UnleakError, match="max_repetition"):
        CandidateConfig(max_repetition=1.5)


def test_other_settings_in_the_same_dir_are_refused(corpus_dir, tmp_path):
    out = tmp_path / "pairs"
    det = build_detector("patterns")
    build_preference_pairs(corpus_dir, ScriptedGenerator(), out,
                           PairsConfig(candidate=CandidateConfig(modes=("nudge",))), detector=det, progress=False)
    with pytest.raises(UnleakError, match="other settings"):
        build_preference_pairs(corpus_dir, ScriptedGenerator(), out,
                               PairsConfig(candidate=CandidateConfig(modes=("chat",))), detector=det, progress=False)


def test_local_generator_samples_with_the_generator_prompt(tiny_model_dir):
    from unleak.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    gen = LocalCandidateGenerator(load_model(str(tiny_model_dir)), tok, CandidateConfig(max_new_tokens=6))
    gen.decoder.eos_ids = set()
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": "Hello there"}]
    reqs = [CandidateRequest(msgs, False, 1), CandidateRequest(msgs, False, 2), CandidateRequest(msgs, False, 1),
            CandidateRequest(msgs + [{"role": "assistant", "content": "Sure"}], True, 1)]
    texts = gen.generate(reqs)
    assert texts[0] == texts[2] and texts[0] != texts[1]  # seeded, order kept
    enc = gen.decoder.encode(GenerationRequest(messages=msgs, guidance=GuidanceConfig(guidance_scale=1.0)))
    assert PromptConfig().generator in tok.decode(enc.pos)


def _stub_openai_app(seen: list):
    app = FastAPI()
    state = {"n": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        state["n"] += 1
        if state["n"] == 1:  # the first call fails: the client must retry
            return JSONResponse({"error": {"message": "busy", "type": "server_error"}}, status_code=503)
        seen.append({"body": body, "auth": request.headers.get("authorization")})
        last = body["messages"][-1]["content"]
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f"echo:{last[-12:]}"}}]}

    return app


def test_openai_generator_against_a_live_stub_server(monkeypatch):
    seen: list = []
    monkeypatch.setenv("UNLEAK_TEST_KEY", "sk-test-123")
    with live_server(_stub_openai_app(seen)) as url:
        gen = OpenAICandidateGenerator("stub-model", base_url=f"{url}/v1", api_key_env="UNLEAK_TEST_KEY",
                                       config=CandidateConfig(max_new_tokens=9), concurrency=2, max_retries=3)
        msgs = [{"role": "user", "content": "tell me something"}]
        texts = gen.generate([CandidateRequest(msgs, False, 7),
                              CandidateRequest(msgs + [{"role": "assistant", "content": "Well"}], True, 8)])
    assert texts == ["echo:me something", "echo:Well"]
    assert len(seen) == 2 and all(s["auth"] == "Bearer sk-test-123" for s in seen)
    bodies = sorted((s["body"] for s in seen), key=lambda b: b["seed"])
    assert bodies[0]["max_tokens"] == 9 and bodies[0]["temperature"] == 0.7
    assert "continue_final_message" not in bodies[0]
    assert bodies[1]["continue_final_message"] is True and bodies[1]["add_generation_prompt"] is False


def test_openai_generator_needs_a_key(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(UnleakError, match=r"\$NO_SUCH_KEY"):
        OpenAICandidateGenerator("m", api_key_env="NO_SUCH_KEY")
    with pytest.raises(UnleakError, match="no_repeat_ngram_size"):  # not an API setting: refused, not dropped
        OpenAICandidateGenerator("m", base_url="http://127.0.0.1:1/v1", config=CandidateConfig(no_repeat_ngram_size=3))


def test_cfg_variant_swaps_under_the_negative_prompt():
    pair = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "r"}]}
    pos, neg = cfg_variant([pair], PromptConfig(positive="P", negative="N"))
    assert pos["prompt"] == [{"role": "system", "content": "P"}, {"role": "user", "content": "u"}]
    assert (pos["chosen"][0]["content"], pos["rejected"][0]["content"]) == ("c", "r")
    assert neg["prompt"][0]["content"] == "N"
    assert (neg["chosen"][0]["content"], neg["rejected"][0]["content"]) == ("r", "c")


def test_killed_build_resumes_without_duplicates(corpus_dir, tmp_path, tiny_model_dir):
    """`unleak pairs build` killed with -9 mid-run continues from its cache on rerun."""
    out = tmp_path / "pairs"
    cmd = [sys.executable, "-m", "unleak.cli", "pairs", "build", "--corpus", str(corpus_dir), "--out", str(out),
           "--model", str(tiny_model_dir), "--modes", "chat,completion", "--candidates", "2", "--max-tries", "1",
           "--max-new-tokens", "24", "--batch-size", "2", "--limit", "12"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    cache = out / "candidates.cache.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not cache.is_file() or len(cache.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(cache.read_text().splitlines())
    assert 4 <= partial < 48, "the run should have been killed mid-way"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    expected = sum(m["candidates"] for m in stats["by_mode"].values())
    assert len(keys) == len(set(keys)) == expected
    assert sum(1 for _ in (out / "samples.jsonl").open()) == stats["samples"] == 12
    shown = subprocess.run([sys.executable, "-m", "unleak.cli", "pairs", "stats", str(out)],
                           capture_output=True, text=True)
    assert shown.returncode == 0 and json.loads(shown.stdout.splitlines()[-1])["pairs"] == stats["pairs"]


# TRL's trainers use transformers' deprecated gradient-checkpointing names themselves
@pytest.mark.filterwarnings("ignore:`(is_)?gradient_checkpointing[a-z_]*` is deprecated:FutureWarning")
def test_pairs_train_with_trl_orpo_and_dpo(corpus_dir, tmp_path, tiny_model_dir):
    """The CFG pairs load with `datasets` and train unmodified with TRL's ORPO and DPO trainers."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from unleak.models import load_tokenizer

    out = tmp_path / "pairs"
    build_preference_pairs(corpus_dir, ScriptedGenerator(), out,
                           PairsConfig(candidate=CandidateConfig(modes=("nudge",), candidates=1)),
                           detector=build_detector("patterns"), progress=False)
    ds = datasets.load_dataset("json", data_files=str(out / "pairs_cfg.jsonl"), split="train").select(range(4))
    tok = load_tokenizer(str(tiny_model_dir))
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], bf16=False, use_cpu=True,
                  max_length=512, save_strategy="no")
    for trainer_cls, cfg in ((ORPOTrainer, ORPOConfig(output_dir=str(tmp_path / "o"), **common)),
                             (DPOTrainer, DPOConfig(output_dir=str(tmp_path / "d"), **common))):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        result = trainer_cls(model=model, args=cfg, train_dataset=ds, processing_class=tok).train()
        assert result.global_step == 1 and result.training_loss == result.training_loss  # ran, not NaN
