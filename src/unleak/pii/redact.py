"""Detected PII spans replaced by a placeholder template (`[REDACTED {name}]` -> `[REDACTED PHONE NUMBER]`).

Used by the pairs' `redact` mode for entities the detector still finds in a
redacted answer (`CandidateConfig.redact_detected`) and by `unleak pii scan
--redact`. A detector's label becomes unleak's PII type first (PERSON ->
NAME, GPE -> LOC); a known value (`unleak.pii.known`) takes the type of the
conversation's value it repeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unleak.corpus.model import fill_placeholder
from unleak.pii.base import canonical_type
from unleak.pii.known import KNOWN_VALUE_LABEL


def redact_spans(text: str, spans: Sequence[Mapping[str, Any]], template: str,
                 type_names: Mapping[str, str] | None = None, known_types: Mapping[str, str] | None = None) -> str:
    """`text` with each detected span (`Span.as_dict()`s) replaced by `template` filled for its type: a
    detector's label as unleak's PII type (`canonical_type`: PERSON -> NAME, GPE -> LOC), a known value's
    the type of the conversation's value it repeats (`known_types`: lower-cased value -> type; else "PII").
    Overlapping spans are replaced as one, with the type of the one that starts first."""
    merged: list[list[Any]] = []
    for sp in sorted(spans, key=lambda sp: (sp["start"], -sp["end"])):
        if merged and sp["start"] < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], sp["end"])
            continue
        kind = ((known_types or {}).get(sp["text"].lower(), "PII") if sp["label"] == KNOWN_VALUE_LABEL
                else canonical_type(sp["label"]))
        merged.append([sp["start"], sp["end"], kind])
    parts, last = [], 0
    for start, end, kind in merged:
        parts += [text[last:start], fill_placeholder(template, kind, kind, type_names)]
        last = end
    return "".join(parts) + text[last:]
