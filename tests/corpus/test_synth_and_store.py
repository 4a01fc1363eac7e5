"""The synthetic corpus: deterministic, diverse, recurring identities, exact spans; splits and stats."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from unleak.corpus.store import corpus_stats, load_corpus, load_split, read_chat_jsonl, save_corpus, split_corpus
from unleak.corpus.store import copy_corpus, corpus_digest, write_chat_jsonl
from unleak.corpus.synth import SITUATIONS, synthesize_corpus
from unleak.errors import UnleakError

TYPES = {"NAME", "LOC", "DATE", "PHONE", "EMAIL", "SSN", "ADDRESS", "ORG", "URL", "IP", "ACCOUNT"}


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = synthesize_corpus(30, 0), synthesize_corpus(30, 0), synthesize_corpus(30, 1)
    assert [x.turns for x in a] == [x.turns for x in b]
    assert [x.turns for x in a] != [x.turns for x in c]


def test_dates_are_drawn_around_a_fixed_day_as_faker_draws_them_on_that_day(monkeypatch):
    """A seed's corpus does not change with the day it is synthesised on: its dates are Faker's draws as made
    on `REFERENCE_DATE` (Faker's clock set to that day gives the same dates), and another `today` shifts them."""
    import datetime as dt

    import faker.providers.date_time as faker_dates
    from faker import Faker

    from unleak.corpus.synth import REFERENCE_DATE, _date_of_birth, _event_date

    def draws(event, birth):
        f = Faker("en_US")
        f.seed_instance(7)
        return [event(f) for _ in range(20)] + [birth(f) for _ in range(20)]

    ours = draws(lambda f: _event_date(FixedChoice(), {"en_US": f}, REFERENCE_DATE),
                 lambda f: _date_of_birth(f, REFERENCE_DATE, 18, 85).isoformat())

    class Real(type):  # Faker's isinstance checks still see plain dates and datetimes
        def __instancecheck__(cls, obj):
            return isinstance(obj, cls.__mro__[1])

    class Day(dt.date, metaclass=Real):
        @classmethod
        def today(cls):
            return REFERENCE_DATE

    class Clock(dt.datetime, metaclass=Real):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.combine(REFERENCE_DATE, dt.time(12), tz)

    with monkeypatch.context() as m:  # Faker's own relative draws, its clock on the reference day
        m.setattr(faker_dates, "dtdate", Day)
        m.setattr(faker_dates, "datetime", Clock)
        fakers = draws(lambda f: f.date_between("-2y", "+1y").strftime("%d %B %Y"),
                       lambda f: f.date_of_birth(minimum_age=18, maximum_age=85).isoformat())
    assert ours == fakers
    base = synthesize_corpus(12, seed=3)
    assert base == synthesize_corpus(12, seed=3, today=REFERENCE_DATE)
    later = synthesize_corpus(12, seed=3, today=REFERENCE_DATE + dt.timedelta(days=400))

    def dates(corpus):
        return [o.value for c in corpus for o in c.pii if o.type == "DATE"]
    assert dates(base) and all(a != b for a, b in zip(dates(base), dates(later)))


class FixedChoice:
    """A `random.Random` stand-in whose `choice` takes the first format (Faker's draws stay Faker's)."""

    @staticmethod
    def choice(options):
        return "%d %B %Y"


def test_shape_types_roles_and_recurring_identities():
    convs = synthesize_corpus(300, 0)
    stats = corpus_stats(convs)
    assert set(stats["by_type"]) == TYPES
    assert stats["by_role"]["assistant"] > stats["by_role"]["user"] * 0.8  # assistants repeat PII
    assert all(2 <= len(c.turns) - 1 <= 6 for c in convs)
    names = [o.value for c in convs for o in c.pii if o.type == "NAME" and " " in o.value]
    assert len(set(names)) < len(names)  # identities recur across conversations
    dialogs = {tuple(t.text for t in c.turns) for c in convs}
    assert len(dialogs) == len(convs)  # no two dialogs are the same
    assert len({c.turns[1].text for c in convs}) >= 0.95 * len(convs)
    assert len(SITUATIONS) >= 12


def test_context_before_the_first_pii_identifies_the_conversation():
    """What a memorising model can be attacked with: the text in front of the first value."""
    convs = synthesize_corpus(300, 0)
    contexts = []
    for c in convs:
        first = min((o for o in c.pii), key=lambda o: (o.turn, o.start))
        contexts.append(c.turns[first.turn].text[:first.start])
    assert len(set(contexts)) >= 0.97 * len(convs)
    assert all(len(x.split()) >= 6 for x in contexts)


def test_spans_are_exact_and_scrubbing_uses_consistent_placeholders():
    for c in synthesize_corpus(40, 2):
        for o in c.pii:
            assert c.turns[o.turn].text[o.start:o.end] == o.value
        by_placeholder = {}
        for o in c.pii:
            assert by_placeholder.setdefault(o.placeholder, o.value) == o.value


def test_save_load_split_is_by_conversation_and_deterministic(tmp_path):
    convs = synthesize_corpus(50, 0)
    save_corpus(tmp_path, convs, {"seed": 0})
    loaded = load_corpus(tmp_path)
    assert [c.turns for c in loaded] == [c.turns for c in convs]
    assert [c.pii for c in loaded] == [c.pii for c in convs]
    split = split_corpus(tmp_path, 0.2, seed=0)
    assert len(split["test"]) == 10 and not set(split["test"]) & set(split["train"])
    assert split_corpus(tmp_path, 0.2, seed=0) == split
    assert {c.id for c in load_split(tmp_path, "test")} == set(split["test"])


def test_chat_jsonl_round_trip(tmp_path):
    convs = synthesize_corpus(5, 0)
    write_chat_jsonl(tmp_path / "c.jsonl", convs)
    back = read_chat_jsonl(tmp_path / "c.jsonl")
    assert [c.turns for c in back] == [c.turns for c in convs] and [c.pii for c in back] == [c.pii for c in convs]


def test_a_corpus_is_copied_with_its_own_split_or_split_here(tmp_path):
    convs = synthesize_corpus(12, 1)
    src = save_corpus(tmp_path / "src", convs, {"seed": 1})
    ids = [c.id for c in convs]
    own = {"train": ids[:3], "test": ids[3:5]}  # not what split_corpus would draw
    (src / "split.json").write_text(json.dumps(own))
    digest = corpus_digest(src)
    assert copy_corpus(src, tmp_path / "a", 0.5, seed=0) == own
    assert [c.turns for c in load_split(tmp_path / "a", "test")] == [c.turns for c in convs[3:5]]
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["source"] == str(src.resolve())
    write_chat_jsonl(tmp_path / "c.jsonl", convs)  # a file has no split: drawn with the given fraction and seed
    drawn = copy_corpus(tmp_path / "c.jsonl", tmp_path / "b", 0.25, seed=3)
    assert len(drawn["test"]) == 3 and drawn == split_corpus(tmp_path / "a", 0.25, seed=3)
    bad = [({"train": ids[:3], "test": ["nobody"]}, "field 'test': 1 ids not in the corpus, e.g. 'nobody'"),
           ({"train": ids[:3]}, "field 'test': expected a non-empty list"),
           ({"train": ids[:3], "test": ids[2:4]}, "1 conversations in both train and test")]
    for split, message in bad:
        (src / "split.json").write_text(json.dumps(split))
        assert corpus_digest(src) != digest  # the split is part of what a cached stage is keyed by
        with pytest.raises(UnleakError, match=re.escape(f"{src / 'split.json'}: {message}")):
            copy_corpus(src, tmp_path / "x", 0.5)
    with pytest.raises(UnleakError, match="no corpus here"):
        corpus_digest(tmp_path / "empty")


def test_cli_synth_split_stats(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "unleak.cli", "corpus", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    out = run("synth", "--out", str(tmp_path / "c"), "--n", "20", "--seed", "4")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["conversations"] == 20
    assert json.loads(run("split", str(tmp_path / "c")).stdout) == {"train": 16, "test": 4, "seed": 0}
    stats = json.loads(run("stats", str(tmp_path / "c")).stdout.splitlines()[-1])
    assert stats["conversations"] == 20
    missing = run("split", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a corpus directory" in missing.stderr
