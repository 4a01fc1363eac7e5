"""The in-memory model of a PII-rich conversation.

A `Conversation` is an ordered list of `Turn`s (role, unscrubbed text) plus
its `PIIOccurrence`s: type (NAME, LOC, ...), value, placeholder (`NAME-1`),
turn index and character span in that turn's unscrubbed text. `scrubbed()`
gives the turns with every occurrence replaced by `[PLACEHOLDER]`, the form
attackers hold in the LLM-PC challenge.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from unleak.errors import UnleakError


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


@dataclass(frozen=True)
class PIIOccurrence:
    type: str
    value: str
    placeholder: str
    turn: int
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fill_placeholder(template: str, pii_type: str, placeholder: str,
                     type_names: Mapping[str, str] | None = None) -> str:
    """`template` filled for one PII value: `{type}`, `{placeholder}` and `{name}` (`type_names[type]`, else
    the type with "_" as spaces), e.g. "[REDACTED {name}]" -> "[REDACTED PHONE NUMBER]"."""
    name = (type_names or {}).get(pii_type, pii_type.replace("_", " "))
    return template.format(type=pii_type, placeholder=placeholder, name=name)


def check_template(template: str, what: str) -> str:
    """`template` if `fill_placeholder` can fill it, else an error naming `what` (a setting or flag)."""
    try:
        template.format(type="NAME", placeholder="NAME-1", name="NAME")
    except (KeyError, IndexError, ValueError) as exc:
        raise UnleakError(f"{what} {template!r}: only {{name}}, {{type}} and {{placeholder}} can be filled in "
                          f"({exc})") from None
    return template


#: a field of a placeholder template (`fill_placeholder` fills it)
TEMPLATE_FIELD = re.compile(r"(\{(?:type|placeholder|name)\})")


def placeholder_pattern(template: str) -> re.Pattern[str]:
    """A regex matching `template` filled for any PII value (`fill_placeholder`): each field stands for a run of
    letters, digits, spaces, `_` and `-` ("[REDACTED {name}]" matches "[REDACTED PHONE NUMBER]")."""
    parts = TEMPLATE_FIELD.split(template)
    return re.compile("".join(r"[A-Za-z0-9_ -]+?" if p in ("{type}", "{placeholder}", "{name}") else re.escape(p)
                              for p in parts))


def addresses_reader(text: str, occ: PIIOccurrence) -> bool:
    """Whether `occ` addresses the reader of `text`: it opens the text or a sentence, and a comma follows
    ("Dalton, restart it.", "Sure! Dalton, restart it."; not "Dear Dalton," nor "I, Dalton, dispute")."""
    before = text[:occ.start].rstrip()
    return text[occ.end:occ.end + 1] == "," and (not before or before[-1] in ".!?")


@dataclass
class Conversation:
    id: str
    turns: list[Turn]
    pii: list[PIIOccurrence] = field(default_factory=list)

    def __post_init__(self) -> None:
        for occ in self.pii:
            if not 0 <= occ.turn < len(self.turns):
                raise UnleakError(f"conversation {self.id}: PII occurrence in missing turn {occ.turn}")
            if self.turns[occ.turn].text[occ.start:occ.end] != occ.value:
                raise UnleakError(f"conversation {self.id}: span {occ.start}:{occ.end} of turn {occ.turn} "
                                  f"is not {occ.value!r}")

    def messages(self) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.text} for t in self.turns]

    def pii_in_turn(self, turn: int) -> list[PIIOccurrence]:
        return sorted((o for o in self.pii if o.turn == turn), key=lambda o: o.start)

    def redacted_text(self, turn: int, template: str = "[{placeholder}]", start: int = 0,
                      type_names: Mapping[str, str] | None = None, drop_addresses: Collection[str] = ()) -> str:
        """Turn `turn`'s text from character `start` on, each PII occurrence there replaced by `template`
        (filled with the occurrence's `type`, `placeholder`, and `name`: `type_names[type]`, else the
        type with "_" as spaces). An occurrence of a type in `drop_addresses` that addresses the reader
        (`addresses_reader`) is left out instead, with its comma, and the word after it capitalised
        ("Sure! Dalton, restart it." -> "Sure! Restart it.")."""
        text, last = self.turns[turn].text, start
        parts: list[str] = []
        capitalise = False
        for occ in self.pii_in_turn(turn):
            if occ.start < start:
                continue
            between = text[last:occ.start]
            parts.append(between[:1].upper() + between[1:] if capitalise else between)
            if occ.type in drop_addresses and addresses_reader(text, occ):
                last = len(text) - len(text[occ.end + 1:].lstrip())
                capitalise = True
            else:
                parts.append(fill_placeholder(template, occ.type, occ.placeholder, type_names))
                last, capitalise = occ.end, False
        rest = text[last:]
        return "".join(parts) + (rest[:1].upper() + rest[1:] if capitalise else rest)

    def scrubbed_turns(self) -> list[Turn]:
        """Turns with each PII occurrence replaced by its `[PLACEHOLDER]`."""
        return [Turn(t.role, self.redacted_text(i)) for i, t in enumerate(self.turns)]

    def placeholder_values(self) -> dict[str, str]:
        return {o.placeholder: o.value for o in self.pii}
