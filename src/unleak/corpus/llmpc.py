"""Reader and writer of the LLM-PC challenge format.

Two parallel JSONL files: the scrubbed file, one `{"idx": int, "messages":
str}` per line where `messages` is a Llama-3.1 chat string whose PII is
replaced by `[TYPE-N]` placeholders, and the PII file, whose line i is the
dict placeholder -> value of conversation i. Reading rebuilds the unscrubbed
turns with exact character spans; writing gives back the same bytes.
Malformed dict keys (seen in the real data, e.g. `Song Title]" by [NAME-2`)
and placeholders without a value are skipped with a warning naming file:line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from unleak.corpus.model import Conversation, PIIOccurrence, Turn
from unleak.errors import UnleakError
from unleak.jsonl import atomic_write_jsonl, read_jsonl, require

log = logging.getLogger(__name__)

BEGIN = "<|begin_of_text|>"
_TURN = re.compile(r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)
PLACEHOLDER_KEY = re.compile(r"[A-Z][A-Z_]*(?:-[A-Z_]+)*-\d+")
_PLACEHOLDER_IN_TEXT = re.compile(r"\[([A-Z][A-Z_]*(?:-[A-Z_]+)*-\d+)\]")
DEFAULT_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def placeholder_type(key: str) -> str:
    """`NAME-1` -> `NAME`, `PHI_TYPE-ID-2` -> `PHI_TYPE-ID`."""
    return key.rsplit("-", 1)[0]


def parse_llama3(messages: str, where: str) -> list[Turn]:
    """Turns of a Llama-3.1 chat string; the whole string must be well-formed turns."""
    body = messages[len(BEGIN):] if messages.startswith(BEGIN) else messages
    turns, pos = [], 0
    for m in _TURN.finditer(body):
        if m.start() != pos:
            raise UnleakError(f"{where}: field 'messages': unexpected text at character {pos}")
        turns.append(Turn(m.group(1), m.group(2)))
        pos = m.end()
    if pos != len(body) or not turns:
        raise UnleakError(f"{where}: field 'messages': not a Llama-3.1 chat string (stops at character {pos})")
    return turns


def format_llama3(turns: list[Turn]) -> str:
    return BEGIN + "".join(f"<|start_header_id|>{t.role}<|end_header_id|>\n\n{t.text}<|eot_id|>" for t in turns)


def unscrub(conv_id: str, scrubbed: list[Turn], values: dict[str, str], where: str) -> Conversation:
    """Fill placeholders with their values, recording each occurrence's span."""
    turns, pii = [], []
    missing: set[str] = set()
    for i, t in enumerate(scrubbed):
        out, last, length = [], 0, 0
        for m in _PLACEHOLDER_IN_TEXT.finditer(t.text):
            key = m.group(1)
            if key not in values:
                missing.add(key)
                continue
            chunk = t.text[last:m.start()]
            out.append(chunk)
            length += len(chunk)
            pii.append(PIIOccurrence(placeholder_type(key), values[key], key, i, length, length + len(values[key])))
            out.append(values[key])
            length += len(values[key])
            last = m.end()
        out.append(t.text[last:])
        turns.append(Turn(t.role, "".join(out)))
    if missing:
        log.warning("%s: placeholders without a value left as text: %s", where, ", ".join(sorted(missing)))
    return Conversation(conv_id, turns, pii)


def read_llmpc(scrubbed_path: str | Path, pii_path: str | Path) -> list[Conversation]:
    """Conversations from an LLM-PC scrubbed file and its parallel PII-dict file."""
    dicts = []
    for number, row in read_jsonl(pii_path):
        if not isinstance(row, dict):
            raise UnleakError(f"{pii_path}:{number}: expected a JSON object placeholder -> value")
        clean = {}
        for key, value in row.items():
            if not PLACEHOLDER_KEY.fullmatch(key) or not isinstance(value, str) or not value:
                log.warning("%s:%d: skipping malformed PII entry %r", pii_path, number, key[:60])
                continue
            clean[key] = value
        dicts.append((number, clean))
    conversations = []
    for k, (number, row) in enumerate(read_jsonl(scrubbed_path)):
        where = f"{scrubbed_path}:{number}"
        idx = require(row, "idx", int, where)
        messages = require(row, "messages", str, where)
        if k >= len(dicts):
            raise UnleakError(f"{where}: no matching line in {pii_path} ({len(dicts)} lines)")
        conversations.append(unscrub(str(idx), parse_llama3(messages, where), dicts[k][1], where))
    if len(dicts) > len(conversations):
        log.warning("%s has %d lines, %s only %d", pii_path, len(dicts), scrubbed_path, len(conversations))
    return conversations


def write_llmpc(conversations: list[Conversation], scrubbed_path: str | Path, pii_path: str | Path) -> None:
    """Write conversations in the LLM-PC format (atomically, both files)."""
    rows, dicts = [], []
    for c in conversations:
        idx = int(c.id) if c.id.isdigit() else c.id
        rows.append({"idx": idx, "messages": format_llama3(c.scrubbed_turns())})
        dicts.append(c.placeholder_values())
    atomic_write_jsonl(pii_path, dicts)
    atomic_write_jsonl(scrubbed_path, rows)
