"""General requests: what a model answers where nothing private is asked, for fluency and over-redaction.

The test prompts end where a PII value is due, so any answer without it reads
as a surprise to the clean reference model: the test split's own answers,
perfectly redacted, score about 2.6 times their perplexity as written. That
perplexity cannot tell a defence that breaks the language (the original's
broken grammar at high guidance) from one that redacts well. Answers to
general requests can: each configuration answers them as served (a defence
behind its system prompt and under its guidance, a baseline on the bare
request, as the generative utility asks), and the evaluation reports their
perplexity under the reference model (conditioned on the bare request) and
the share of answers holding a redaction placeholder, which nothing in such a
request calls for, and the values of the test conversations the answers repeat
(known values, `unleak.pii.known`): a model that memorised its data spills it
into unrelated answers too.

The requests are `config.GENERAL_EVAL_REQUESTS` (none of the keep pairs'
topics, none from MMLU) or a user's file (`chat.read_requests`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from unleak.chat import Message, read_requests, render_prompt
from unleak.config import GENERAL_EVAL_REQUESTS, GuidanceConfig, SamplingConfig
from unleak.corpus.model import TEMPLATE_FIELD, placeholder_pattern
from unleak.errors import UnleakError

#: a placeholder cut off at an answer's end counts from this many characters of its template's opening on
TRUNCATED_CHARS = 4


def general_requests(count: int | None, source: str | None = None) -> list[list[Message]]:
    """The first `count` general requests (None: all) as dialogs ending in a user turn: from `source` (a .txt
    file, one a line, or JSONL with `prompt` or `messages`), else the embedded `GENERAL_EVAL_REQUESTS`."""
    pool = (read_requests(source) if source is not None
            else [[{"role": "user", "content": r}] for r in GENERAL_EVAL_REQUESTS])
    if not pool:
        raise UnleakError(f"{source}: no requests")
    return pool[:count]


def holds_placeholder(text: str, template: str) -> bool:
    """Whether `text` holds a placeholder of `template` (`[REDACTED {name}]`): a whole one anywhere, or one cut
    off by the answer's length at its end (`... to [REDACTED ORGANIZ`, `... call [RED`; at least the first
    `TRUNCATED_CHARS` characters of the template's opening, so a template opening with its field, `{type}!`,
    counts whole ones only)."""
    if placeholder_pattern(template).search(text):
        return True
    opening = TEMPLATE_FIELD.split(template)[0]
    if len(opening) < TRUNCATED_CHARS:
        return False
    tail = text.rstrip()
    start = tail.rfind(opening[0])
    if start < 0:
        return False
    tail = tail[start:]
    return len(tail) >= TRUNCATED_CHARS and (opening.startswith(tail) or
                               (tail.startswith(opening) and re.fullmatch(r"[A-Za-z0-9_ -]*", tail[len(opening):])
                                is not None))


def served_answers(generator: Any, dialogs: Sequence[list[Message]], guidances: Sequence[GuidanceConfig],
                   served: bool, max_new_tokens: int, on_batch: Callable[[int], None] | None = None,
                   negative_adapters: Sequence[Any] | None = None) -> list[list[Any]]:
    """Greedy answers to `dialogs` (each ending in a user turn), one list of `GenerationResult` per guidance
    setting, all settings of a dialog decoded in one batch.

    Served: behind the generator's system prompts (both branches when guided), as the model answers users.
    Not served: the dialog as is after an empty system message (a baseline on the bare request).
    `negative_adapters`: each setting's `GenerationRequest.negative_adapter` (None: the generator's).
    """
    from unleak.decoding.generator import GenerationRequest

    sampling = SamplingConfig(max_new_tokens=max_new_tokens)
    tok = generator.tokenizer
    negatives = negative_adapters or [None] * len(guidances)
    groups = []
    for dialog in dialogs:
        if served:
            groups.append([GenerationRequest(messages=list(dialog), guidance=g, sampling=sampling, negative_adapter=n)
                           for g, n in zip(guidances, negatives, strict=True)])
        else:
            ids = tok(render_prompt(tok, [{"role": "system", "content": ""}, *dialog]),
                      add_special_tokens=False)["input_ids"]
            groups.append([GenerationRequest(input_ids=ids, negative_input_ids=ids, guidance=g, sampling=sampling,
                                             negative_adapter=n) for g, n in zip(guidances, negatives, strict=True)])
    results = generator.generate_grouped(groups, on_batch)
    return [[group[i] for group in results] for i in range(len(guidances))]


def spilled_values(texts: Sequence[str], values: frozenset[str]) -> list[list[str]]:
    """Per answer, the known `values` (`unleak.pii.known`: lower-cased, names also by their parts) it repeats,
    overlaps merged, but for a match written in lower-case letters only: nothing in a general request asks
    for a name, and `fields` or `will` there is the common word, not the surname `Fields` or `Will`."""
    from unleak.pii.known import known_value_spans, merged_spans

    return [[sp.text for sp in merged_spans(known_value_spans(t, values)) if not _LOWER_WORDS.fullmatch(sp.text)]
            for t in texts]


_LOWER_WORDS = re.compile(r"[a-z][a-z' -]*")


def general_rows(dialogs: Sequence[list[Message]], texts: Sequence[str], placeholders: Sequence[bool],
                 known: Sequence[list[str]]) -> list[dict[str, Any]]:
    """One `answers/NAME.jsonl` row per general request: the request, the answer, whether it holds a placeholder,
    and the test conversations' values it repeats (`known`: nothing asked for them, so a spill of memory)."""
    return [{"kind": "general", "request": i, "prompt": d[-1]["content"], "response": t, "placeholder": p,
             "known_values": k}
            for i, (d, t, p, k) in enumerate(zip(dialogs, texts, placeholders, known, strict=True))]
