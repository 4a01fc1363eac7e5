"""`unleak pii scan`: detect PII in one text field of every JSONL row, and optionally redact it.

All rows are read and checked before anything is detected or written, so a
bad row (not JSON, field missing, not a string) fails with file:line:field
and leaves no output file. Output: one row per input row, in order, with the
fields named in `keep` copied from the input (an id, the prompt),
`{"entities": [{start, end, label, text, detector}], "count": n}`, and with
a `redact` template `"redacted"`: the text with each entity replaced by the
template filled for its type (`unleak.pii.redact`, `[REDACTED {name}]` ->
`[REDACTED PHONE NUMBER]`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unleak.config import REDACT_TYPE_NAMES
from unleak.corpus.model import check_template
from unleak.errors import UnleakError
from unleak.jsonl import atomic_write_jsonl, read_jsonl, require
from unleak.pii.base import Detector
from unleak.pii.redact import redact_spans

#: the fields `scan_file` writes (a kept input field may not be called so)
OUTPUT_FIELDS = ("entities", "count", "redacted")


def read_scan_rows(path: str | Path, field: str = "text", keep: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """Each row's text and its `keep` fields, checked (file:line:field) before anything is detected."""
    if clash := [k for k in keep if k in OUTPUT_FIELDS]:
        raise UnleakError(f"keep: {', '.join(clash)} would be overwritten by the scan's own output fields "
                          f"({', '.join(OUTPUT_FIELDS)})")
    rows = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        text = require(row, field, str, where)
        rows.append((text, {k: require(row, k, object, where) for k in keep}))
    return rows


def scan_texts(detector: Detector, texts: list[str]) -> list[dict[str, Any]]:
    return [{"entities": [s.as_dict() for s in spans], "count": len(spans)} for spans in detector.detect(texts)]


def scan_file(detector: Detector, in_path: str | Path, out_path: str | Path, field: str = "text",
              keep: Sequence[str] = (), redact: str | None = None,
              type_names: Mapping[str, str] = REDACT_TYPE_NAMES) -> Counter:
    """Scan `in_path` into `out_path` (atomically); return counts by label.

    `keep`: input fields copied to each output row; `redact`: a placeholder template (`{name}`, the type
    in words from `type_names`, `{type}`, `{placeholder}`) for a `redacted` copy of the text."""
    if redact is not None:
        check_template(redact, "redact template")
    return write_scan(detector, read_scan_rows(in_path, field, keep), out_path, redact, type_names)


def write_scan(detector: Detector, rows: list[tuple[str, dict]], out_path: str | Path, redact: str | None = None,
               type_names: Mapping[str, str] = REDACT_TYPE_NAMES) -> Counter:
    """`scan_file` on rows already read (`read_scan_rows`) and a template already checked."""
    found = scan_texts(detector, [text for text, _ in rows])
    out = []
    for (text, kept), result in zip(rows, found):
        if redact is not None:
            result["redacted"] = redact_spans(text, result["entities"], redact, type_names)
        out.append({**kept, **result})
    atomic_write_jsonl(out_path, out)
    return Counter(e["label"] for r in found for e in r["entities"])
