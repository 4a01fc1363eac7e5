"""`unleak pii scan`: detect PII in one text field of every JSONL row.

All rows are read and checked before anything is detected or written, so a
bad row (not JSON, field missing, not a string) fails with file:line:field
and leaves no output file. Output: one row per input row, in order,
`{"entities": [{start, end, label, text, detector}], "count": n}`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from unleak.jsonl import atomic_write_jsonl, read_jsonl, require
from unleak.pii.base import Detector


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    return [require(row, field, str, f"{path}:{number}") for number, row in read_jsonl(path)]


def scan_texts(detector: Detector, texts: list[str]) -> list[dict[str, Any]]:
    return [{"entities": [s.as_dict() for s in spans], "count": len(spans)} for spans in detector.detect(texts)]


def scan_file(detector: Detector, in_path: str | Path, out_path: str | Path, field: str = "text") -> Counter:
    """Scan `in_path` into `out_path` (atomically); return counts by label."""
    rows = scan_texts(detector, read_texts(in_path, field))
    atomic_write_jsonl(out_path, rows)
    return Counter(e["label"] for r in rows for e in r["entities"])
