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


def conversation_values(conversations: Iterable[Conversation]) -> dict[str, frozenset[str]]:
    """Per conversation, the lower-cased PII values it holds and, for names, each part of 3+ letters."""
    out: dict[str, frozenset[str]] = {}
    for c in conversations:
        found: set[str] = set()
        for occ in c.pii:
            value = occ.value.strip().lower()
            if len(value) >= 3:
                found.add(value)
            if occ.type.upper() in NAME_TYPES:
                found.update(part for part in re.split(r"[\s,]+", value) if len(part.strip(".")) >= 3)
        out[c.id] = frozenset(found)
    return out


def known_value_spans(text: str, values: frozenset[str]) -> list[Span]:
    """Spans of `text` that repeat one of `values` as whole words (case-insensitive)."""
    lowered = text.lower()
    return [Span(m.start(), m.end(), "KNOWN_VALUE", text[m.start():m.end()], "known_values")
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
