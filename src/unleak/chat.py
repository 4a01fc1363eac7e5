"""Chat messages: parsing chat-formatted strings, swapping the system prompt, rendering.

unleak works on lists of `{"role", "content"}` messages. Users (and the LLM-PC
`query(prompt)` interface) may hand over a whole chat-formatted string
instead; `parse_chat_text` turns the Llama-3 and ChatML formats back into
messages, so the system prompt can be swapped (as the original's regex swap
did) and the dialog re-rendered with the serving model's own template.
A final assistant message is *continued* (the half-written answer case).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unleak.errors import UnleakError
from unleak.jsonl import read_jsonl

Message = dict[str, str]
ROLES = ("system", "user", "assistant")

_LLAMA3_TURN = re.compile(
    r"<\|start_header_id\|>(?P<role>[a-z]+)<\|end_header_id\|>\n\n(?P<content>.*?)(?P<end><\|eot_id\|>|$)", re.S
)
_CHATML_TURN = re.compile(r"<\|im_start\|>(?P<role>[a-z]+)\n(?P<content>.*?)(?P<end><\|im_end\|>|$)", re.S)


@dataclass(frozen=True)
class ParsedChat:
    """Messages of a chat string; `continue_final` when the last assistant turn is open."""

    messages: list[Message]
    continue_final: bool


def parse_chat_text(text: str) -> ParsedChat | None:
    """Parse a Llama-3 or ChatML chat string into messages; None if `text` is not one.

    An open final turn (no end marker) is kept: an empty open assistant turn is
    a generation prompt and dropped; a non-empty one is a half-written answer
    and is marked to be continued.
    """
    for pattern, marker in ((_LLAMA3_TURN, "<|start_header_id|>"), (_CHATML_TURN, "<|im_start|>")):
        if marker not in text:
            continue
        messages: list[Message] = []
        continue_final = False
        for m in pattern.finditer(text):
            role, content, closed = m.group("role"), m.group("content"), bool(m.group("end"))
            if role not in ROLES:
                raise UnleakError(f"chat string has an unknown role {role!r}")
            if not closed:
                if role != "assistant":
                    raise UnleakError(f"chat string ends inside an open {role!r} turn")
                if content.strip():
                    messages.append({"role": role, "content": content})
                    continue_final = True
                break
            messages.append({"role": role, "content": content})
        return ParsedChat(messages, continue_final)
    return None


def with_system_prompt(messages: list[Message], system: str) -> list[Message]:
    """Messages with `system` as the only system message, first (replacing any present)."""
    return [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]


def validate_messages(messages: Any, where: str = "messages") -> list[Message]:
    """Check a messages list (roles, string contents, non-empty); return it typed."""
    if not isinstance(messages, list) or not messages:
        raise UnleakError(f"{where}: expected a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UnleakError(f"{where}[{i}]: expected {{'role': one of {ROLES}, 'content': str}}")
    if not any(m["content"].strip() for m in messages if m["role"] != "system"):
        raise UnleakError(f"{where}: the dialog is empty")
    return messages


def render_prompt(tokenizer: Any, messages: list[Message], continue_final: bool = False) -> str:
    """The prompt text for `messages` under the tokenizer's chat template.

    With `continue_final` the last (assistant) message is left open for the
    model to continue; otherwise a generation prompt is added.
    """
    if not tokenizer.chat_template:
        raise UnleakError("the tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=not continue_final,
        continue_final_message=continue_final,
    )


def system_header_ids(tokenizer: Any, system: str) -> list[int]:
    """Token ids of a chat that holds only the system message `system`: what a served model puts in front
    of a raw (template-free) prompt, such as the extraction attack's text or a multiple-choice question."""
    text = tokenizer.apply_chat_template([{"role": "system", "content": system}], tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def messages_from_prompt(prompt: str) -> ParsedChat:
    """A user prompt or a full chat string as messages (a plain string is one user message)."""
    if not prompt or not prompt.strip():
        raise UnleakError("empty prompt")
    parsed = parse_chat_text(prompt)
    if parsed is None:
        return ParsedChat([{"role": "user", "content": prompt}], False)
    if not parsed.messages:
        raise UnleakError("the chat string holds no message")
    return parsed


def read_requests(source: str | Path) -> list[list[Message]]:
    """Requests from a .txt file (one a line) or JSONL (`prompt` string or `messages` ending in a user turn)."""
    path = Path(source)
    if path.suffix != ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [[{"role": "user", "content": line.strip()}] for line in lines if line.strip()]
    requests = []
    for i, row in read_jsonl(path):
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"].strip():
            requests.append([{"role": "user", "content": row["prompt"]}])
            continue
        if not isinstance(row, dict) or "messages" not in row:
            raise UnleakError(f"{path}:{i}: needs 'prompt' (a string) or 'messages' (a list of "
                              "{role, content})")
        messages = validate_messages(row["messages"], where=f"{path}:{i}: field 'messages'")
        if messages[-1]["role"] != "user":
            raise UnleakError(f"{path}:{i}: field 'messages' must end in a user turn (the request)")
        requests.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not requests:
        raise UnleakError(f"{path}: no requests")
    return requests
