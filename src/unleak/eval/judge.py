"""Judges of generated multiple-choice answers: the original's LLM judge, or an offline choice matcher.

The original measured utility by generation (its `model_eval.py`): the model
answers "Provide a short answer to the question: ...\\nOptions:\\n1. ..."
greedily, and gpt-4o-mini, told which option is right, returns "Correct",
"Incorrect" or "Can't tell" (`config.JUDGE_PROMPT`); accuracy is the share of
"Correct". `OpenAIJudge` sends that prompt to any OpenAI-compatible endpoint
(OpenAI, vLLM, `unleak serve`). `MatchJudge` needs no model: an answer is
judged by the one choice it names (its text, or failing that the number it
opens with); an answer that names none, or several, is "unknown" — so it
never counts as correct, as "Can't tell" does not. Every judge returns one
`Verdict` per item, with what it was based on (the judge's reply, the choice
matched) for the answers file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from unleak.config import JudgeConfig
from unleak.errors import UnleakError

#: a verdict's label: "correct", "incorrect" or "unknown" (the original's "Can't tell")
VERDICTS = ("correct", "incorrect", "unknown")
#: how the name of an LLM judge (`OpenAIJudge.name`) begins: "llm:MODEL@URL"
LLM_JUDGE_PREFIX = "llm:"


@dataclass(frozen=True)
class JudgeItem:
    """One generated answer to judge: the question, its choices, the right one's index, the answer."""

    question: str
    choices: tuple[str, ...]
    answer: int
    response: str


@dataclass(frozen=True)
class Verdict:
    label: str
    #: what the label rests on: the LLM judge's reply, or the number of the choice matched ("" if none)
    basis: str


class Judge(Protocol):
    name: str

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


def numbered_options(choices: Sequence[str]) -> str:
    """The original's option list: "1. first\\n2. second..."."""
    return "\n".join(f"{i + 1}. {c}" for i, c in enumerate(choices))


def answer_request(question: str, choices: Sequence[str], config: JudgeConfig) -> str:
    """The user message that asks the evaluated model for a short answer (the original's wording)."""
    return config.answer_prompt.format(question=question.strip(), options=numbered_options(choices))


def parse_verdict(reply: str) -> str:
    """The original's reading of a judge's reply: "Correct" in it, else "Incorrect" in it, else unknown."""
    if "Correct" in reply:
        return "correct"
    if "Incorrect" in reply:
        return "incorrect"
    return "unknown"


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


_LEADING_NUMBER = re.compile(r"^\W*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\W*)?\(?(\d{1,2})(?:[.):]|\s|$)",
                             re.IGNORECASE)


def match_choice(response: str, choices: Sequence[str]) -> int | None:
    """The index of the one choice `response` names, or None (none or several).

    A choice is named when its text occurs in the response as whole words
    (case and punctuation ignored); a choice whose text lies inside another
    named one ("Paris" in "Paris, Texas") does not count apart. With no choice
    text named, an answer that opens with a choice's number ("2", "2.",
    "Option 2:", "The answer is (2)") names that choice.
    """
    def names(text: str, words: str) -> bool:
        return bool(words) and re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None

    text, norms = _normalise(response), [_normalise(str(c)) for c in choices]
    named = [i for i, n in enumerate(norms) if names(text, n)]
    named = [i for i in named if not any(norms[j] != norms[i] and norms[i] in norms[j] for j in named)]
    if len(named) == 1:
        return named[0]
    if named:
        return None
    m = _LEADING_NUMBER.match(response.strip())
    if m and 1 <= int(m.group(1)) <= len(choices):
        return int(m.group(1)) - 1
    return None


class MatchJudge:
    """Offline judge: correct when the answer names the right choice only (`match_choice`)."""

    name = "match"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        out = []
        for item in items:
            k = match_choice(item.response, item.choices)
            label = "unknown" if k is None else "correct" if k == item.answer else "incorrect"
            out.append(Verdict(label, "" if k is None else str(k + 1)))
        return out


class OpenAIJudge:
    """The original's LLM judge through an OpenAI-compatible chat endpoint (temperature 0)."""

    def __init__(self, config: JudgeConfig, client: Any = None) -> None:
        if not config.url:
            raise UnleakError("the LLM judge needs an endpoint URL (judge url)")
        import openai

        self.config = config
        self.name = f"{LLM_JUDGE_PREFIX}{config.model}@{config.url}"
        self.client = client or openai.OpenAI(base_url=config.url, timeout=config.timeout_s, max_retries=3,
                                              api_key=os.environ.get(config.api_key_env) or "unused")

    def messages(self, item: JudgeItem) -> list[dict[str, str]]:
        question = f"{item.question.strip()}\nAnswer options:\n{numbered_options(item.choices)}"
        user = self.config.prompt.format(question=question, correct_answer=item.choices[item.answer],
                                         answer=item.response)
        return [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": user}]

    def _one(self, item: JudgeItem) -> Verdict:
        import openai

        try:
            reply = self.client.chat.completions.create(model=self.config.model, messages=self.messages(item),
                                                        temperature=0.0,
                                                        max_tokens=self.config.reply_max_tokens)
        except openai.OpenAIError as exc:
            raise UnleakError(f"judge {self.config.url}: {type(exc).__name__}: {exc}") from None
        text = reply.choices[0].message.content or ""
        return Verdict(parse_verdict(text), text.strip())

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(self._one, items))


def build_judge(config: JudgeConfig) -> Judge:
    """`OpenAIJudge` when `config.url` is set, else `MatchJudge`."""
    return OpenAIJudge(config) if config.url else MatchJudge()
