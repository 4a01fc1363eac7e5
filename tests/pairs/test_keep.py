"""Keep pairs: request sources, sentence trimming, invented placeholders, and their place in the pair files."""

from __future__ import annotations

import json
import random

import pytest

from unleak.config import (GENERAL_TEMPLATES, GENERAL_TOPICS, CandidateConfig, KeepConfig, PairsConfig,
                           PromptConfig, REDACT_TYPE_NAMES)
from unleak.corpus.model import placeholder_pattern
from unleak.errors import UnleakError
from unleak.chat import read_requests
from unleak.pairs.build import build_preference_pairs
from unleak.pairs.keep import (Phrase, complete_sentences, invent_placeholders, keep_requests, noun_phrases,
                               open_with, placeholder_openers, request_key)
from unleak.pii import build_detector

TEMPLATE = "[REDACTED {name}]"


def test_embedded_requests_are_seeded_topic_questions():
    a = keep_requests(KeepConfig(requests=20, seed=1))
    assert a == keep_requests(KeepConfig(requests=20, seed=1)) and a != keep_requests(KeepConfig(requests=20))
    assert len(a) == 20 and len({json.dumps(d) for d in a}) == 20
    texts = {t.format(topic=topic) for t in GENERAL_TEMPLATES for topic in GENERAL_TOPICS}
    assert all(len(d) == 1 and d[0]["role"] == "user" and d[0]["content"] in texts for d in a)
    assert keep_requests(KeepConfig()) == []
    assert len(keep_requests(KeepConfig(requests=10_000))) == len(texts)


def test_requests_from_files_and_their_errors(tmp_path):
    txt = tmp_path / "r.txt"
    txt.write_text("How do tides work?\n\nWhat is a prime number?\n")
    assert read_requests(txt) == [[{"role": "user", "content": "How do tides work?"}],
                                  [{"role": "user", "content": "What is a prime number?"}]]
    good = tmp_path / "r.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    good.write_text(json.dumps({"prompt": "Define entropy."}) + "\n" + json.dumps({"messages": chat}) + "\n")
    assert read_requests(good) == [[{"role": "user", "content": "Define entropy."}], chat]
    assert len(keep_requests(KeepConfig(requests=5, source=str(good)))) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"messages": chat + [
        {"role": "assistant", "content": "Rayleigh."}]}) + "\n")
    with pytest.raises(UnleakError, match=r"bad.jsonl:2: field 'messages' must end in a user turn"):
        read_requests(bad)
    bad.write_text(json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(UnleakError, match=r"bad.jsonl:1: needs 'prompt'"):
        read_requests(bad)
    bad.write_text("{oops\n")
    with pytest.raises(UnleakError, match=r"bad.jsonl:1: not valid JSON"):
        read_requests(bad)
    with pytest.raises(UnleakError, match="no such file"):
        KeepConfig(requests=3, source=str(tmp_path / "missing.txt"))
    with pytest.raises(UnleakError, match=">= 0"):
        KeepConfig(requests=-1)


def test_complete_sentences_cuts_an_unfinished_tail():
    assert complete_sentences("Tides rise twice a day. The moon pulls the") == "Tides rise twice a day."
    assert complete_sentences(' He said "go." Then (it stopped.) and') == 'He said "go." Then (it stopped.)'
    assert complete_sentences("Version 2.5 is out! Really?") == "Version 2.5 is out! Really?"
    assert complete_sentences("no sentence ends here") is None
    assert complete_sentences("   ") is None


def test_invent_placeholders_by_hand():
    text = "Gravity pulls the Moon toward Earth every day."
    phrases = [Phrase(0, 7), Phrase(14, 22, "LOC"), Phrase(30, 35, "LOC"), Phrase(36, 45, "DATE")]
    names = dict(REDACT_TYPE_NAMES)
    # 4 phrases, one in two -> 2 replaced; a phrase's entity label gives the type, else one is drawn
    rng = random.Random(0)
    picked = sorted(random.Random(0).sample(phrases, 2), key=lambda p: p.start)
    out = invent_placeholders(text, phrases, rng, TEMPLATE, names, ("NAME",), every=2, maximum=3)
    expected = text
    for p in reversed(picked):
        kind = {"LOC": "LOCATION", "DATE": "DATE"}.get(p.label or "", "NAME")
        expected = expected[:p.start] + f"[REDACTED {kind}]" + expected[p.end:]
    assert out == expected and out.count("[REDACTED") == 2
    # at least one, at most `maximum`, none without phrases
    assert invent_placeholders(text, phrases[:1], random.Random(0), TEMPLATE, names, ("ORG",)) \
        == "[REDACTED ORGANIZATION] pulls the Moon toward Earth every day."
    assert invent_placeholders(text, phrases, random.Random(0), "<{type}>", names, ("NAME",), every=1,
                               maximum=1).count("<") == 1
    assert invent_placeholders(text, [], random.Random(0), TEMPLATE, names, ("NAME",)) is None


def test_invent_placeholders_prefers_entities_when_asked():
    text = "Gravity pulls the Moon toward Earth every day."
    phrases = [Phrase(0, 7), Phrase(14, 22), Phrase(30, 35, "LOC"), Phrase(36, 45)]
    names = dict(REDACT_TYPE_NAMES)
    # one in four -> one replaced: with prefer_entities always the one holding an entity, on any seed
    for seed in range(8):
        assert invent_placeholders(text, phrases, random.Random(seed), TEMPLATE, names, ("NAME",), every=4,
                                   prefer_entities=True) == "Gravity pulls the Moon toward [REDACTED LOCATION] every day."
    unpreferred = {invent_placeholders(text, phrases, random.Random(seed), TEMPLATE, names, ("NAME",), every=4)
                   for seed in range(8)}
    assert len(unpreferred) > 1  # without it, any phrase
    # more to replace than entities: the entity first, then others drawn as before
    out = invent_placeholders(text, phrases, random.Random(0), TEMPLATE, names, ("NAME",), every=2,
                              prefer_entities=True)
    assert "[REDACTED LOCATION]" in out and out.count("[REDACTED") == 2


def test_open_with_by_hand():
    name = "[REDACTED NAME],"
    assert open_with("Rivers carry water.", name) == "[REDACTED NAME], rivers carry water."
    assert open_with("DNA is copied.", name) == "[REDACTED NAME], DNA is copied."
    assert open_with("Einstein's theory.", name) == "[REDACTED NAME], Einstein's theory."
    assert open_with("1. Gravity pulls.", name) == "[REDACTED NAME], 1. Gravity pulls."
    assert open_with("Rivers carry water.", "For [REDACTED NAME],") == "For [REDACTED NAME], rivers carry water."
    with pytest.raises(UnleakError, match="name_opener must be a share"):
        KeepConfig(name_opener=1.5)
    with pytest.raises(UnleakError, match="opener_source must be 'name' or 'corpus'"):
        KeepConfig(opener_source="file")


def test_placeholder_pattern_matches_filled_templates():
    pattern = placeholder_pattern("[REDACTED {name}]")
    assert pattern.findall("Call [REDACTED PHONE NUMBER] or [REDACTED NAME].") == ["[REDACTED PHONE NUMBER]",
                                                                                   "[REDACTED NAME]"]
    assert pattern.findall("[REDACTED] and [redacted NAME]") == []
    assert placeholder_pattern("<{type}:{placeholder}>").findall("hi <NAME:NAME-1>, <LOC:LOC-2>") == [
        "<NAME:NAME-1>", "<LOC:LOC-2>"]


def test_placeholder_openers_by_hand():
    pattern = placeholder_pattern(TEMPLATE)
    answers = [
        "Happy to help. For [REDACTED NAME], write to the bank.",  # after a greeting sentence
        "[REDACTED NAME], your order shipped.",  # at the very start
        "Dear [REDACTED NAME], thanks.\nSincerely, [REDACTED NAME]",  # no comma after the second
        "Sure: I, [REDACTED NAME], agree.",  # after a colon; the first comma is not a clause start
        "The package for my cousin in town is [REDACTED NAME], sadly.",  # 8 words before it: not an opener
        "Call [REDACTED PHONE NUMBER] today.",  # no comma
        "For [REDACTED NAME], it works.",  # a repeat
        "For Tommy at [REDACTED ORGANIZATION], and on 02/22 [REDACTED NAME], too.",  # unredacted values: left out
    ]
    assert placeholder_openers(answers, pattern) == ["For [REDACTED NAME],", "[REDACTED NAME],",
                                                     "Dear [REDACTED NAME],", "I, [REDACTED NAME],"]
    assert placeholder_openers(answers[4:5], pattern, max_words=8) == [
        "The package for my cousin in town is [REDACTED NAME],"]
    assert placeholder_openers([], pattern) == []


def test_noun_phrases_from_spacy():
    from unleak.pii.detectors import load_spacy

    nlp = load_spacy(parser=True)
    text = "The French Revolution changed politics in Paris."
    [phrases] = noun_phrases(nlp, [text])
    spans = {text[p.start:p.end]: p.label for p in phrases}
    assert "Paris" in spans and spans["Paris"] == "GPE"
    assert "The French Revolution" in spans and "politics" in spans
    assert noun_phrases(nlp, ["It is what it is."]) == [[]]  # pronouns are not replaced


class TopicGenerator:
    """Answers a general request plainly, one request with a phone number, and one without a sentence end."""

    name = "topics"

    def __init__(self):
        self.calls = 0

    def generate(self, requests):
        self.calls += len(requests)
        out = []
        for r in requests:
            assert r.messages[0] == {"role": "system", "content": PromptConfig().generator}
            topic = r.messages[-1]["content"]
            if "magnetism" in topic:
                out.append("Call the magnetism hotline at 555-777-1234.")
            elif "gravity" in topic:
                out.append("gravity is a force that")
            else:
                out.append("The answer covers the main idea of the topic. It explains why students learn it. And")
        return out


def test_keep_pairs_in_both_variants(corpus_dir, tmp_path):
    source = tmp_path / "requests.txt"
    source.write_text("Explain magnetism.\nExplain gravity.\nExplain tides.\nExplain rivers.\n")
    cfg = PairsConfig(candidate=CandidateConfig(modes=("redact",)), pii_candidates_as_rejected=False,
                      keep=KeepConfig(requests=4, source=str(source)))
    gen = TopicGenerator()
    out = tmp_path / "pairs"
    stats = build_preference_pairs(corpus_dir, gen, out, cfg, detector=build_detector("patterns"), progress=False)
    assert stats["keep"] == {"requests": 4, "unusable": 1, "with_pii": 1, "no_phrase": 0, "name_opener": 0, "pairs": 2}
    assert stats["generator"] == "topics" and gen.calls == 4
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    keep = [r for r in rows if r["mode"] == "keep"]
    assert len(keep) == 2 and stats["pairs"] == len(rows)
    assert stats["by_role"]["assistant"]["pairs"] == len(rows) - 2
    for r in keep:
        assert r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"] in ("Explain tides.", "Explain rivers.")
        assert r["sample_id"] == request_key(r["prompt"])
        chosen, rejected = r["chosen"][0]["content"], r["rejected"][0]["content"]
        assert chosen == "The answer covers the main idea of the topic. It explains why students learn it."
        assert "[REDACTED " in rejected and "[REDACTED " not in chosen
    cfg_rows = [json.loads(x) for x in (out / "pairs_cfg.jsonl").read_text().splitlines()]
    keep_cfg = [r for r in cfg_rows if r["mode"] == "keep"]
    assert {r["system"] for r in keep_cfg} == {"positive", "negative"} and len(keep_cfg) == 4
    for r in keep_cfg:  # not swapped under the negative prompt
        assert "[REDACTED " not in r["chosen"][0]["content"] and "[REDACTED " in r["rejected"][0]["content"]
    # name_opener 1: every rejected side also opens with the name placeholder; the chosen sides as before
    opened = build_preference_pairs(corpus_dir, gen, out, PairsConfig(
        candidate=cfg.candidate, pii_candidates_as_rejected=False,
        keep=KeepConfig(requests=4, source=str(source), name_opener=1.0)), detector=build_detector("patterns"),
        progress=False)
    assert opened["keep"]["name_opener"] == 2 and gen.calls == 4
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines() if '"keep"' in x]
    assert all(r["rejected"][0]["content"].startswith("[REDACTED NAME], ") for r in rows)
    assert [r["chosen"] for r in rows] == [r["chosen"] for r in keep]
    # opener_source corpus: the addresses the redacted train answers write, each rejected side opened by one
    corpus = build_preference_pairs(corpus_dir, gen, out, PairsConfig(
        candidate=cfg.candidate, pii_candidates_as_rejected=False,
        keep=KeepConfig(requests=4, source=str(source), name_opener=1.0, opener_source="corpus", seed=3)),
        detector=build_detector("patterns"), progress=False)
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    expected = placeholder_openers([r["chosen"][0]["content"] for r in rows if r["mode"] == "redact"],
                                   placeholder_pattern(TEMPLATE))
    assert len(expected) > 1 and corpus["keep"]["openers"] == expected
    keep_rows = [r for r in rows if r["mode"] == "keep"]
    assert len(keep_rows) == 2 and [r["chosen"] for r in keep_rows] == [r["chosen"] for r in keep]
    assert all(any(r["rejected"][0]["content"].startswith(o + " ") for o in expected) for r in keep_rows)
    # a rerun answers nothing again (the answers are cached with the candidates)
    again = build_preference_pairs(corpus_dir, gen, out, cfg, detector=build_detector("patterns"), progress=False)
    assert gen.calls == 4 and again["keep"] == stats["keep"]
    with pytest.raises(UnleakError, match="keep pairs need a generator"):
        build_preference_pairs(corpus_dir, None, tmp_path / "none", cfg, detector=build_detector("patterns"),
                               progress=False)


class EntityGenerator:
    """Answers naming a public figure, one repeating a PII value of the train split, and one plain."""

    name = "entities"

    def __init__(self, known_value):
        self.known_value = known_value

    def generate(self, requests):
        out = []
        for r in requests:
            topic = r.messages[-1]["content"]
            if "relativity" in topic:
                out.append("Albert Einstein explained relativity with thought experiments and simple equations.")
            elif "letters" in topic:
                out.append(f"Letters from {self.known_value} explain the main idea of the history of mail.")
            else:
                out.append("Rivers carry water from the high ground to the sea over many years.")
        return out


class EinsteinDetector:
    """Flags `Einstein` as a person, the way NER flags a public figure."""

    def detect(self, texts):
        from unleak.pii.base import Span

        return [[Span(t.index("Einstein"), t.index("Einstein") + 8, "PERSON", "Einstein", "test")]
                if "Einstein" in t else [] for t in texts]


def test_keep_pairs_with_public_entities(corpus_dir, tmp_path):
    from unleak.corpus.store import load_split

    value = next(o.value for c in load_split(corpus_dir, "train") for o in c.pii if o.type == "NAME")
    source = tmp_path / "requests.txt"
    source.write_text("Explain relativity.\nExplain letters.\nExplain rivers.\n")
    base = PairsConfig(candidate=CandidateConfig(modes=("redact",)), pii_candidates_as_rejected=False,
                       keep=KeepConfig(requests=3, source=str(source)))
    gen = EntityGenerator(value)
    # off (the default): the answer naming Einstein is left out, as NER flags it; the known value too
    off = build_preference_pairs(corpus_dir, gen, tmp_path / "off", base, detector=EinsteinDetector(), progress=False)
    assert off["keep"]["with_pii"] == 2 and off["keep"]["pairs"] == 1
    # on: Einstein's answer is kept, his name replaced on the rejected side; the known value still refused
    cfg = PairsConfig(candidate=base.candidate, pii_candidates_as_rejected=False,
                      keep=KeepConfig(requests=3, source=str(source), entities=True, every=10))
    on = build_preference_pairs(corpus_dir, gen, tmp_path / "on", cfg, detector=EinsteinDetector(), progress=False)
    assert on["keep"]["with_pii"] == 1 and on["keep"]["pairs"] == 2
    rows = [json.loads(x) for x in (tmp_path / "on" / "pairs.jsonl").read_text().splitlines()]
    [einstein] = [r for r in rows if r["mode"] == "keep" and "Einstein" in r["chosen"][0]["content"]]
    assert einstein["rejected"][0]["content"].startswith("[REDACTED NAME] explained relativity")
    assert not any(value in r["chosen"][0]["content"] for r in rows if r["mode"] == "keep")
