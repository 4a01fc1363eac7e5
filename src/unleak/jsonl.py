"""JSON Lines input and atomic output, shared by every stage.

Reading: `read_jsonl` yields `(line_number, object)` and `require` fetches a
typed field; both raise `UnleakError` naming file, line and field. Writing:
`atomic_write_jsonl` / `atomic_write_text` write to a temporary file in the
same directory and rename it into place, so a crash or a bad input row never
leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from unleak.errors import UnleakError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, parsed_object)` for every non-blank line of `path`."""
    p = Path(path)
    if not p.is_file():
        raise UnleakError(f"{p}: file not found")
    with p.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UnleakError(f"{p}:{number}: not valid JSON ({exc.msg})") from None
            yield number, obj


def require(obj: Any, field: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`obj[field]`, checked to be an instance of `kind`; `where` is "file:line"."""
    if not isinstance(obj, dict):
        raise UnleakError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if field not in obj:
        raise UnleakError(f"{where}: missing field {field!r}")
    value = obj[field]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UnleakError(f"{where}: field {field!r} must be {names}, got {type(value).__name__}")
    return value


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file + rename); creates parent directories."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line to `path` atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """The JSON-object rows of an append-only cache written by `append_jsonl` (none if it does not exist); a
    torn line left by a killed writer is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def append_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Append rows and flush them to disk (resumable caches).

    A torn last line left by a killed writer is closed with a newline first, so
    it stays one unreadable line (skipped by the cache reader) instead of
    swallowing the next row.
    """
    p = Path(path)
    torn = False
    if p.is_file() and p.stat().st_size:
        with p.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
    with p.open("a", encoding="utf-8") as fh:
        fh.write(("\n" if torn else "") + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())
