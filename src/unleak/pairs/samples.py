"""Samples per PII location: the unit that preference pairs, leakage evaluation and the demo share.

For every PII occurrence inside an assistant turn of a conversation there is
one `Sample`: its `dialog` is the conversation before that turn (PII left in,
as in the original), its `prefix` the assistant's text up to the PII, and its
`target` the rest of the answer (the PII-bearing continuation the model
memorised). Samples whose dialog and prefix coincide are kept once.

With `roles=("assistant", "user")` PII inside user turns gives samples too
(`role="user"`, not in the original): the prompt is the dialog plus the
user's half-written message, the target the rest of it. A model fine-tuned
on whole conversations memorises what users wrote as well, and the
extraction attack cuts the text before every placeholder, user turns
included. A user turn whose PII comes first (empty prefix) gives none: there
is nothing of the message to continue; nor does a first turn with no system
prompt before it (a pair's prompt cannot be empty).

The whitespace before the PII belongs to the target, not the prefix: BPE
tokenizers write it into the next word's token (" Reed", " ["), so a prompt
ending in "dinner in " ends in a lone space token that training text never
has there. Measured on the demo (SmolLM2): with the space in the
prefix the defended model answered `REDACTED NAME` without its bracket, and
its only leaks left were values that start with a digit (`573.500.4438`,
`031 Autumn Causeway`), the one case where a lone space token is the normal
tokenization.

`name_opener_samples` (not in the original; `PairsConfig.name_openers`) adds,
for each assistant answer after a user turn that names its writer, a sample at
the answer's start whose target is that answer opened with the user's first
name (`Crystal, sure! ...`): a synthetic rejected side, against the same
answer opened with the name's placeholder (`redact`), so that the defence
learns not to address the user by the name from the dialog. A fine-tuned model
opens the answers it memorised that way with the name, and few train answers
do (2 of seed 0's 170 samples): the defended model's one leaked name on the
demo's seed 0 opened such an answer.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unleak.chat import Message
from unleak.corpus.model import Conversation
from unleak.pii.known import NAME_TYPES

#: bump when the samples of a corpus, or the ones a limit picks, change (2: the space before the PII moved
#: from prefix to target; 3: the pairs' limit picks answers that open with their PII as a stratum of their
#: own), so cached stages built on the old ones are rebuilt
SAMPLES_VERSION = 3


@dataclass(frozen=True)
class Sample:
    id: str
    conversation_id: str
    turn: int
    pii_type: str
    pii_value: str
    dialog: tuple[tuple[str, str], ...]  # (role, content) of the turns before the answer
    prefix: str
    target: str
    #: whose turn the prefix and target belong to
    role: str = "assistant"
    #: a name-opener sample (`name_opener_samples`): the placeholder of the user's name that the target
    #: (the answer opened with that first name, not what the conversation holds) opens with; "" otherwise
    opener: str = ""

    @property
    def messages(self) -> list[Message]:
        return [{"role": r, "content": c} for r, c in self.dialog]

    @property
    def original_answer(self) -> str:
        return self.prefix + self.target

    def prompt_messages(self) -> list[Message]:
        """The dialog plus the half-written turn (a final message of `role` when the prefix is not empty)."""
        return self.messages + ([{"role": self.role, "content": self.prefix}] if self.prefix else [])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "conversation_id": self.conversation_id, "turn": self.turn,
                "pii_type": self.pii_type, "pii_value": self.pii_value, "messages": self.messages,
                "prefix": self.prefix, "target": self.target, "role": self.role,
                **({"opener": self.opener} if self.opener else {})}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Sample:
        return cls(row["id"], row["conversation_id"], row["turn"], row["pii_type"], row["pii_value"],
                   tuple((m["role"], m["content"]) for m in row["messages"]), row["prefix"], row["target"],
                   row.get("role", "assistant"), row.get("opener", ""))


def sample_id(dialog: tuple[tuple[str, str], ...], prefix: str, role: str = "assistant") -> str:
    key = [dialog, prefix] if role == "assistant" else [dialog, prefix, role]
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()
    return digest[:16]


def build_samples(conversations: list[Conversation], roles: tuple[str, ...] = ("assistant",)) -> list[Sample]:
    """One sample per PII occurrence in a turn of `roles`, in corpus order, deduplicated by prompt.

    An assistant sample needs a user turn before it; a user sample a non-empty prefix and a turn before
    it (a system prompt will do: a preference pair's prompt cannot be empty)."""
    out: list[Sample] = []
    seen: set[str] = set()
    for conv in conversations:
        for occ in sorted(conv.pii, key=lambda o: (o.turn, o.start)):
            turn = conv.turns[occ.turn]
            if turn.role not in roles:
                continue
            dialog = tuple((t.role, t.text) for t in conv.turns[: occ.turn])
            prefix = turn.text[: occ.start].rstrip()
            if turn.role == "assistant" and not any(r == "user" for r, _ in dialog):
                continue
            if turn.role != "assistant" and not (prefix and dialog):
                continue
            sid = sample_id(dialog, prefix, turn.role)
            if sid in seen:
                continue
            seen.add(sid)
            out.append(Sample(sid, conv.id, occ.turn, occ.type, occ.value, dialog, prefix,
                              turn.text[len(prefix):], turn.role))
    return out


def first_name(value: str) -> str | None:
    """The first word of a name that is not a title or an initial ("Mr. Breandan Melvin" -> "Breandan")."""
    words = [w.strip(",") for w in value.split() if not w.endswith(".")]
    return next((w for w in words if len(w) > 1), None)


def lower_first(text: str) -> str:
    """`text` with its first letter lower-cased, unless it starts "I", "I'm", ... or an acronym ("USA")."""
    word = text.split(" ", 1)[0]
    if not word or word == "I" or word.startswith("I'") or (len(word) > 1 and word[1].isupper()):
        return text
    return text[0].lower() + text[1:]


def opened_by(opener: str, text: str) -> str:
    """`text` addressed to `opener` first, as a name-opener sample's sides are ("Dalton" or "[REDACTED NAME]"
    + "Sure! ..." -> "Dalton, sure! ..."). Unlike the keep pairs' `keep.open_with`, a first word with
    punctuation attached is lower-cased too: these openers stand in front of the corpus's own answers."""
    return f"{opener}, {lower_first(text)}"


def name_opener_samples(conversations: list[Conversation], taken: set[str],
                        name_types: frozenset[str] = NAME_TYPES) -> list[Sample]:
    """One sample per assistant answer after a user turn that holds a name (PII of `name_types`): the dialog
    before the answer, an empty prefix, and as target the answer opened with the first name of the latest
    such value (`first_name`), e.g. "Crystal, certainly. ...". Answers whose sample id is in `taken` (those
    that open with PII of their own, which `build_samples` covers) give none."""
    out: list[Sample] = []
    taken = set(taken)
    for conv in conversations:
        for i, turn in enumerate(conv.turns):
            named = [o for o in conv.pii if o.turn < i and o.type in name_types and conv.turns[o.turn].role == "user"]
            if turn.role != "assistant" or not named or not turn.text.strip():
                continue
            latest = max(named, key=lambda o: (o.turn, o.start))
            name = first_name(latest.value)
            dialog = tuple((t.role, t.text) for t in conv.turns[:i])
            sid = sample_id(dialog, "")
            if name is None or sid in taken:
                continue
            taken.add(sid)
            out.append(Sample(sid, conv.id, i, latest.type, name, dialog, "", opened_by(name, turn.text),
                              opener=latest.placeholder))
    return out


def pii_type_stratum(sample: Sample) -> tuple[str, ...]:
    """The evaluation's strata: the PII type."""
    return (sample.pii_type,)


def opening_stratum(sample: Sample) -> tuple[str, ...]:
    """The pairs' strata: the PII type, and apart from it the samples whose turn opens with their PII.

    Such a sample has an empty half-written part: the model writes the whole answer, and a fine-tuned
    model opens it with a name from the dialog. They are rare (2 of the demo's 170 train samples, seed 0),
    and a stratification by type alone left both out of its 64, so no pair taught that shape: the
    defended model's one leaked name (seed 0) was the user's, opening such an answer."""
    return (sample.pii_type, "opening") if not sample.prefix.strip() else (sample.pii_type,)


def pair_stratum(sample: Sample) -> tuple[str, ...]:
    """The oversampling's strata (`PairsConfig.min_stratum_pairs`): the turn's role, then `opening_stratum`;
    name-opener samples apart (`name_opener_samples`)."""
    return (sample.role, *opening_stratum(sample), *(("name opener",) if sample.opener else ()))


def limit_samples(samples: list[Sample], limit: int | None, seed: int = 0,
                  stratum: Callable[[Sample], tuple[str, ...]] = pii_type_stratum) -> list[Sample]:
    """At most `limit` samples, chosen with a seed and stratified by `stratum` (round-robin over strata)."""
    if limit is None or limit >= len(samples):
        return samples
    rng = random.Random(seed)
    groups: dict[tuple[str, ...], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[stratum(s)].append(s)
    for group in groups.values():
        rng.shuffle(group)
    chosen: list[Sample] = []
    keys = sorted(groups)
    while len(chosen) < limit:
        for k in keys:
            if groups[k] and len(chosen) < limit:
                chosen.append(groups[k].pop())
    keep = {s.id for s in chosen}
    return [s for s in samples if s.id in keep]
