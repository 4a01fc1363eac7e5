"""Known values: a conversation's own PII values found again in a text.

NER labels what looks like PII; it misses phone numbers, street addresses and
dates a model reproduces from memory, and it cannot tell a memorised value
from an invented one. Where the true values are known (a corpus with its PII
annotations), looking for them directly answers the question that matters:
did the model write this person's data? Pairs use it to reject candidates
(`PairsConfig.reject_known_values`); evaluation counts it next to the NER
profiles.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from unleak.corpus.model import Conversation
from unleak.pii.base import Span

#: PII types whose values are names; each part of such a value is looked for on its own too
NAME_TYPES = frozenset({"NAME", "PERSON"})
#: the label of a known value's span
KNOWN_VALUE_LABEL = "KNOWN_VALUE"


def value_types(conversation: Conversation) -> dict[str, str]:
    """The conversation's lower-cased PII values of 3+ characters, and for names each part of 3+ letters,
    with the PII type of the occurrence each comes from (the first one's, where values repeat)."""
    found: dict[str, str] = {}
    for occ in conversation.pii:
        value = occ.value.strip().lower()
        if len(value) >= 3:
            found.setdefault(value, occ.type)
        if occ.type.upper() in NAME_TYPES:
            for part in re.split(r"[\s,]+", value):
                if len(part.strip(".")) >= 3:
                    found.setdefault(part, occ.type)
    return found


def conversation_values(conversations: Iterable[Conversation]) -> dict[str, frozenset[str]]:
    """Per conversation, the lower-cased PII values it holds and, for names, each part of 3+ letters."""
    return {c.id: frozenset(value_types(c)) for c in conversations}


def known_value_spans(text: str, values: frozenset[str]) -> list[Span]:
    """Spans of `text` that repeat one of `values` as whole words (case-insensitive)."""
    lowered = text.lower()
    return [Span(m.start(), m.end(), KNOWN_VALUE_LABEL, text[m.start():m.end()], "known_values")
            for value in sorted(values) for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", lowered)]


def merged_spans(spans: list[Span]) -> list[Span]:
    """`spans` with overlapping ones merged (a full name and its parts count once), in text order."""
    out: list[Span] = []
    for sp in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and sp.start < out[-1].end:
            last = out[-1]
            if sp.end > last.end:
                out[-1] = Span(last.start, sp.end, last.label, last.text + sp.text[last.end - sp.start:],
                               last.detector)
        else:
            out.append(sp)
    return out


def count_known_values(texts: list[str], values: list[frozenset[str]]) -> dict[str, Any]:
    """Known values repeated in each text (overlaps merged): total, per text, texts with any, and the spans."""
    spans = [merged_spans(known_value_spans(t, v)) for t, v in zip(texts, values, strict=True)]
    per = [len(s) for s in spans]
    return {"total": sum(per), "per_answer": per, "answers_with_known": sum(1 for n in per if n), "spans": spans}
