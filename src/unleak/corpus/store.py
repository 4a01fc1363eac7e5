"""A corpus directory, its train/test split, statistics, and the plain chat-JSONL format.

Layout of a corpus directory (what `unleak corpus synth` writes and every
later stage reads):

- `scrubbed.jsonl`, `pii.jsonl`: the conversations in the LLM-PC format;
- `spans.jsonl`: ground truth, one row per conversation: `{"id", "pii": [{type, value,
  placeholder, turn, start, end}]}` (spans in the unscrubbed turn text);
- `meta.json`: how it was made (generator, seed, size);
- `split.json`: `{"seed", "test_fraction", "train": [ids], "test": [ids]}`, by conversation.

Users bring their own data as chat JSONL: `{"messages": [{"role", "content"}],
"pii": [{"type", "value", "turn", "start", "end"}]}` (`read_chat_jsonl`).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from unleak.corpus.llmpc import read_llmpc, write_llmpc
from unleak.corpus.model import Conversation, PIIOccurrence, Turn
from unleak.errors import UnleakError
from unleak.jsonl import atomic_write_jsonl, atomic_write_text, read_jsonl, require

SCRUBBED, PII, SPANS, META, SPLIT = "scrubbed.jsonl", "pii.jsonl", "spans.jsonl", "meta.json", "split.json"


def save_corpus(directory: str | Path, conversations: list[Conversation], meta: dict[str, Any]) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_llmpc(conversations, d / SCRUBBED, d / PII)
    atomic_write_jsonl(d / SPANS, [{"id": c.id, "pii": [o.as_dict() for o in c.pii]} for c in conversations])
    atomic_write_text(d / META, json.dumps({**meta, "conversations": len(conversations)}, indent=2) + "\n")
    return d


def load_corpus(directory: str | Path) -> list[Conversation]:
    """Conversations of a corpus directory (LLM-PC files) or of a chat-JSONL file."""
    p = Path(directory)
    if p.is_file():
        return read_chat_jsonl(p)
    if not (p / SCRUBBED).is_file():
        raise UnleakError(f"{p}: not a corpus directory (no {SCRUBBED}); make one with `unleak corpus synth`")
    return read_llmpc(p / SCRUBBED, p / PII)


def split_corpus(directory: str | Path, test_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Split the conversations of a corpus directory into train/test by conversation; writes split.json."""
    if not 0 < test_fraction < 1:
        raise UnleakError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ids = [c.id for c in load_corpus(directory)]
    if len(ids) < 2:
        raise UnleakError(f"{directory}: need at least 2 conversations to split")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(order) * test_fraction))
    split = {"seed": seed, "test_fraction": test_fraction,
             "train": sorted(order[n_test:], key=ids.index), "test": sorted(order[:n_test], key=ids.index)}
    atomic_write_text(Path(directory) / SPLIT, json.dumps(split, indent=1) + "\n")
    return split


def corpus_digest(source: str | Path) -> str:
    """A hash of a corpus directory's files (conversations, ground truth, split) or of a chat-JSONL file."""
    p = Path(source)
    files = [p] if p.is_file() else [p / name for name in (SCRUBBED, PII, SPANS, SPLIT) if (p / name).is_file()]
    if not files:
        raise UnleakError(f"{p}: no corpus here (a corpus directory or a chat-JSONL file)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def copy_corpus(source: str | Path, directory: str | Path, test_fraction: float = 0.2,
                seed: int = 0) -> dict[str, Any]:
    """A corpus (directory or chat-JSONL file) saved into `directory`, with its own train/test split when it
    has one (checked against its conversations), else split here; returns the split."""
    src = Path(source)
    conversations = load_corpus(src)
    if not conversations:
        raise UnleakError(f"{src}: no conversations")
    save_corpus(directory, conversations, {"source": str(src.resolve())})
    split_path = src / SPLIT if src.is_dir() else None
    if split_path is None or not split_path.is_file():
        return split_corpus(directory, test_fraction, seed)
    try:
        split = json.loads(split_path.read_text())
    except json.JSONDecodeError as exc:
        raise UnleakError(f"{split_path}: invalid JSON: {exc.msg}") from None
    ids = {c.id for c in conversations}
    for part in ("train", "test"):
        if not isinstance(split, dict) or not isinstance(split.get(part), list) or not split[part]:
            raise UnleakError(f"{split_path}: field {part!r}: expected a non-empty list of conversation ids")
        unknown = [i for i in split[part] if i not in ids]
        if unknown:
            raise UnleakError(f"{split_path}: field {part!r}: {len(unknown)} ids not in the corpus, e.g. "
                              f"{unknown[0]!r}")
    both = set(split["train"]) & set(split["test"])
    if both:
        raise UnleakError(f"{split_path}: {len(both)} conversations in both train and test, e.g. {min(both)!r}")
    atomic_write_text(Path(directory) / SPLIT, json.dumps(split, indent=1) + "\n")
    return split


def load_split(directory: str | Path, part: str) -> list[Conversation]:
    """The `train` or `test` conversations of a split corpus directory."""
    path = Path(directory) / SPLIT
    if not path.is_file():
        raise UnleakError(f"{directory}: corpus has no train/test split; run `unleak corpus split {directory}`")
    split = json.loads(path.read_text())
    if part not in ("train", "test") or not split.get(part):
        raise UnleakError(f"{path}: no {part!r} split")
    wanted = set(split[part])
    return [c for c in load_corpus(directory) if c.id in wanted]


def corpus_stats(conversations: list[Conversation]) -> dict[str, Any]:
    by_type, by_role = Counter(), Counter()
    for c in conversations:
        for o in c.pii:
            by_type[o.type] += 1
            by_role[c.turns[o.turn].role] += 1
    return {
        "conversations": len(conversations),
        "turns": sum(len(c.turns) for c in conversations),
        "pii_occurrences": sum(len(c.pii) for c in conversations),
        "distinct_values": len({o.value for c in conversations for o in c.pii}),
        "by_type": dict(by_type.most_common()),
        "by_role": dict(by_role.most_common()),
    }


def read_chat_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from chat JSONL rows `{"messages": [...], "pii": [...], "id"?: str}`."""
    out = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        messages = require(row, "messages", list, where)
        turns = []
        for i, m in enumerate(messages):
            role = require(m, "role", str, f"{where}: messages[{i}]")
            turns.append(Turn(role, require(m, "content", str, f"{where}: messages[{i}]")))
        pii = []
        for j, o in enumerate(row.get("pii", [])):
            w = f"{where}: pii[{j}]"
            pii.append(PIIOccurrence(require(o, "type", str, w), require(o, "value", str, w),
                                     o.get("placeholder") or f"{o['type']}-{j + 1}", require(o, "turn", int, w),
                                     require(o, "start", int, w), require(o, "end", int, w)))
        try:
            out.append(Conversation(str(row.get("id", number)), turns, pii))
        except UnleakError as exc:
            raise UnleakError(f"{where}: {exc}") from None
    return out


def write_chat_jsonl(path: str | Path, conversations: list[Conversation]) -> None:
    atomic_write_jsonl(path, [{"id": c.id, "messages": c.messages(), "pii": [o.as_dict() for o in c.pii]}
                              for c in conversations])
