"""Known values: a conversation's own PII found again, overlaps merged, counted per answer."""

from unleak.corpus.model import Conversation, PIIOccurrence, Turn
from unleak.pii.base import Span
from unleak.pii.known import conversation_values, count_known_values, known_value_spans, merged_spans


def conversation(cid: str = "c1") -> Conversation:
    text = "Al: I am Ann Lee, phone 555-201-3344, born 1 May 1990."
    return Conversation(cid, [Turn("user", text)], [
        PIIOccurrence("NAME", "Ann Lee", "NAME-1", 0, text.index("Ann"), text.index("Ann") + 7),
        PIIOccurrence("PHONE", "555-201-3344", "PHONE-1", 0, text.index("555"), text.index("555") + 12),
        PIIOccurrence("DATE", "1 May 1990", "DATE-1", 0, text.index("1 May"), text.index("1 May") + 10),
        PIIOccurrence("NAME", "Al", "NAME-2", 0, 0, 2),  # too short to look for
    ])


def test_values_and_name_parts():
    assert conversation_values([conversation()])["c1"] == {"ann lee", "ann", "lee", "555-201-3344", "1 may 1990"}
    spans = known_value_spans("Sure ANN, call 555-201-3344; Leeds and annual plans are fine.",
                              conversation_values([conversation()])["c1"])
    assert sorted((sp.text, sp.label) for sp in spans) == [("555-201-3344", "KNOWN_VALUE"), ("ANN", "KNOWN_VALUE")]


def test_merged_spans_join_overlaps_and_keep_the_rest():
    def sp(a, b, text):
        return Span(a, b, "KNOWN_VALUE", text, "known_values")

    # "Ann Lee" found as the full name and as its two parts: one span
    got = merged_spans([sp(4, 7, "Ann"), sp(0, 7, "Ann Lee"), sp(0, 3, "Ann")])
    assert [(s.start, s.end, s.text) for s in got] == [(0, 7, "Ann Lee")]
    # partial overlap extends the span; a separate one stays separate
    got = merged_spans([sp(10, 14, "wxyz"), sp(0, 4, "abcd"), sp(2, 6, "cdef")])
    assert [(s.start, s.end, s.text) for s in got] == [(0, 6, "abcdef"), (10, 14, "wxyz")]


def test_count_known_values_per_answer():
    values = conversation_values([conversation(), Conversation("c2", [], [])])
    texts = ["Call Ann Lee at 555-201-3344.", "[REDACTED NAME], born on a date.", "Ann was born 1 May 1990."]
    got = count_known_values(texts, [values["c1"], values["c1"], values["c2"]])
    assert got["per_answer"] == [2, 0, 0] and got["total"] == 2 and got["answers_with_known"] == 1
    assert [s.text for s in got["spans"][0]] == ["Ann Lee", "555-201-3344"]
