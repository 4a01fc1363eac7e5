"""Keep pairs: general requests answered as they are (chosen) against invented placeholders (rejected).

A defence trained on redaction pairs alone learns to write placeholders
everywhere, also into answers with nothing private in them. A keep pair
shows the other side (`KeepConfig`, not in the original): a request with
nothing private, the generator's answer to it as chosen (NER-checked like
every chosen answer), and the same answer with some of its noun phrases
replaced by placeholders as rejected.

- `keep_requests(config)`: the requests, from the embedded topics or a file;
- `complete_sentences(text)`: an answer cut at its last finished sentence (a
  candidate that stopped at the token limit would teach answers that stop
  mid-sentence);
- `invent_placeholders(text, phrases, ...)`: the pure rewrite of the rejected
  side, on noun-phrase spans given as character offsets;
- `open_with(text, opener)`: the rejected side opened with a placeholder address (`[REDACTED NAME],`),
  as the corpus opens its answers with the user's name;
- `placeholder_openers(answers, pattern)`: such addresses as the redacted train answers write them
  (`For [REDACTED NAME],`, `Dear [REDACTED NAME],`);
- `noun_phrases(nlp, texts)`: those spans from spaCy's parser.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unleak.chat import Message, read_requests
from unleak.config import GENERAL_TEMPLATES, GENERAL_TOPICS, KeepConfig
from unleak.corpus.model import fill_placeholder
from unleak.pii.base import CANONICAL

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
#: where a sentence or clause may start: after a sentence end, a colon or semicolon, or a line break
_CLAUSE_START = re.compile(r"[.!?:;][\"')\]]*\s+|\n")


@dataclass(frozen=True)
class Phrase:
    """A noun phrase of an answer: character offsets and the entity label inside it, if any."""

    start: int
    end: int
    label: str | None = None


def keep_requests(config: KeepConfig) -> list[list[Message]]:
    """`config.requests` dialogs (each ending in a user turn), seeded order; from `config.source` when set."""
    if config.requests == 0:
        return []
    if config.source is None:
        pool = [[{"role": "user", "content": t.format(topic=topic)}]
                for t in GENERAL_TEMPLATES for topic in GENERAL_TOPICS]
    else:
        pool = read_requests(config.source)
    random.Random(config.seed).shuffle(pool)
    return pool[:config.requests]


def request_key(dialog: Sequence[Message]) -> str:
    """The candidate-cache key of a request's answer: by its text, so another source never reuses it."""
    return "keep/" + hashlib.sha256(json.dumps(list(dialog), sort_keys=True).encode()).hexdigest()[:16]


def complete_sentences(text: str) -> str | None:
    """`text` up to its last finished sentence (None when it has none)."""
    text = text.strip()
    ends = list(_SENTENCE_END.finditer(text))
    return text[:ends[-1].end()] if ends else None


def invent_placeholders(text: str, phrases: Sequence[Phrase], rng: random.Random, template: str,
                        type_names: Mapping[str, str], types: Sequence[str], every: int = 3,
                        maximum: int = 3, prefer_entities: bool = False) -> str | None:
    """`text` with about one in `every` of `phrases` (at least one, at most `maximum`) replaced by a placeholder.

    The placeholder is `template` filled in (`{name}` from `type_names`, as the `redact` mode does) for
    the PII type of the phrase's entity label (`pii.base.CANONICAL`), or one drawn from `types`. With
    `prefer_entities` the phrases holding an entity are drawn first. None when there is no phrase to replace.
    """
    if not phrases:
        return None
    k = max(1, min(maximum, len(phrases) // every))
    first = [p for p in phrases if p.label] if prefer_entities else []
    picked = rng.sample(first, min(k, len(first)))
    picked += rng.sample([p for p in phrases if p not in picked], k - len(picked))
    chosen = sorted(picked, key=lambda p: p.start)
    out, last = [], 0
    for p in chosen:
        if p.start < last:
            continue  # overlapping phrases: the first one wins
        kind = CANONICAL[p.label] if p.label in CANONICAL else rng.choice(list(types))
        out += [text[last:p.start], fill_placeholder(template, kind, f"{kind}-1", type_names)]
        last = p.end
    out.append(text[last:])
    return "".join(out)


def open_with(text: str, opener: str) -> str:
    """`text` opened with `opener` (`Rivers matter.`, `For [REDACTED NAME],` -> `For [REDACTED NAME], rivers
    matter.`); the first word keeps its case unless it is a capitalised plain word (`DNA`, `Einstein's` stay)."""
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    lower = first[:1].isupper() and first[1:].islower() and first.isalpha()
    return f"{opener} {text[0].lower() + text[1:] if lower else text}"


def placeholder_openers(answers: Sequence[str], placeholder: re.Pattern[str], max_words: int = 4) -> list[str]:
    """The ways `answers` address someone by a placeholder: each sentence's start up to a placeholder that a
    comma follows, with at most `max_words` words before it (`Happy to help. For [REDACTED NAME], write ...`
    -> `For [REDACTED NAME],`); distinct, in order of first appearance. Starts holding a name or number
    the redaction left (a value the user gave in the prompt: `For Tommy at [REDACTED ORGANIZATION],`) are
    left out: only the first word may be capitalised or a number."""
    found: dict[str, None] = {}
    for answer in answers:
        for m in placeholder.finditer(answer):
            if answer[m.end():m.end() + 1] != ",":
                continue
            head = answer[:m.start()]
            start = max((b.end() for b in _CLAUSE_START.finditer(head)), default=0)
            words = placeholder.sub("", head[start:]).split()
            if len(head[start:].split()) <= max_words and not any(w[0].isupper() or w[0].isdigit() for w in words[1:]):
                found[answer[start:m.end() + 1]] = None
    return list(found)


def noun_phrases(nlp: Any, texts: Sequence[str]) -> list[list[Phrase]]:
    """Each text's noun phrases (spaCy's `noun_chunks`; pronouns and one- or two-letter phrases left out)."""
    result = []
    for doc in nlp.pipe(texts):
        result.append([Phrase(c.start_char, c.end_char, next((e.label_ for e in c.ents), None))
                       for c in doc.noun_chunks if c.root.pos_ != "PRON" and len(c.text) > 2])
    return result


def keep_pair(dialog: list[Message], chosen: str, rejected: str, generator: str) -> dict[str, Any]:
    """A keep pair in TRL's conversational format, with the provenance fields of the other pairs."""
    return {"prompt": dialog, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "sample_id": request_key(dialog),
            "conversation_id": None, "pii_type": None, "role": "assistant", "generator": generator,
            "mode": "keep", "rejected_source": "invented placeholders"}
