"""An output filter for served answers: PII a detector finds is replaced by `[REDACTED TYPE]` before the text
leaves the server.

Not part of the method (which changes the model): a last line behind the
adapter and the guidance, for deployments that want one, switched on per
policy (`Policy.redact_output`: the PII profile whose detector runs). The text
is filtered segment by segment, a segment ending after a sentence's end
(`.`, `!`, `?` followed by white space) or a newline, so a stream can release
each sentence as soon as it is complete and a whole answer is filtered the same
way: streamed or not, the client gets the same text. A segment still open waits
for the rest of the answer (its end is not yet known). What a detector misses
passes: read the evaluation of the served policy (`unleak eval run --endpoint`)
for what gets through.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from unleak.pii.redact import redact_spans

#: where a segment ends: after a sentence's final punctuation and the white space that follows it, or a newline
SEGMENT_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")


def complete_length(text: str) -> int:
    """How much of `text` (a stream's text so far) is whole segments: up to the last boundary that more text
    cannot extend (one that ends before `text` does); 0 if none."""
    ends = [m.end() for m in SEGMENT_END.finditer(text) if m.end() < len(text)]
    return ends[-1] if ends else 0


def segments(text: str) -> list[str]:
    """`text` cut after each segment boundary (the last segment may be open); their concatenation is `text`."""
    out, last = [], 0
    for m in SEGMENT_END.finditer(text):
        out.append(text[last:m.end()])
        last = m.end()
    if last < len(text):
        out.append(text[last:])
    return out


class OutputRedactor:
    """Redacts answers with `detector` (thread-safe: one text at a time reaches the detector), counting what it
    replaced by PII type."""

    def __init__(self, detector: Any, template: str, type_names: Mapping[str, str]) -> None:
        self.detector = detector
        self.template = template
        self.type_names = type_names
        self._lock = threading.Lock()

    def redact(self, text: str) -> tuple[str, Counter]:
        """`text` filtered segment by segment, and the count of replaced spans by detector label."""
        parts = segments(text)
        if not parts:
            return text, Counter()
        with self._lock:
            found = self.detector.detect(parts)
        labels = Counter(sp.label for spans in found for sp in spans)
        return "".join(redact_spans(p, [sp.as_dict() for sp in spans], self.template, self.type_names)
                       for p, spans in zip(parts, found, strict=True)), labels


class StreamRedactor:
    """One streamed answer: `feed` the new text, get the filtered text of the segments it completed; `close`
    gives the filtered rest. The pieces add up to `OutputRedactor.redact` of the whole answer."""

    def __init__(self, redactor: OutputRedactor) -> None:
        self.redactor = redactor
        self.pending = ""
        self.labels: Counter = Counter()

    def feed(self, text: str) -> str:
        self.pending += text
        cut = complete_length(self.pending)
        if not cut:
            return ""
        done, self.pending = self.pending[:cut], self.pending[cut:]
        out, labels = self.redactor.redact(done)
        self.labels += labels
        return out

    def close(self) -> str:
        rest, self.pending = self.pending, ""
        out, labels = self.redactor.redact(rest)
        self.labels += labels
        return out
