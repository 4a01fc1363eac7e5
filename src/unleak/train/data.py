"""Tokenisation for training: preference pairs (TRL's conversational format) and whole chats for SFT.

A pair's prompt is rendered with the model's chat template (a generation
prompt after a final user message; a final assistant message is continued,
and the answer is appended to it, not rendered as a second assistant turn;
an answer in the user's role is rendered as the user's next turn);
chosen and rejected are the template's rendering of prompt + answer minus the
prompt (as TRL does), cut right after their EOS token so both end with it.
Tokens that chosen and rejected share at their start move into the prompt: a
pair `prefix + clean continuation` vs `prefix + PII` is then trained exactly as
the original's "half-written answer" samples (prompt = dialog + prefix).
The prompt is cut from the left to `max_prompt_length`, the answers to
`max_length - prompt`. `tokenize_space_pair` cuts a pair a second way, after
the space its answers share where one side writes it as a token of its own
(before digits), the state the extraction attack leaves a model in
(`OrpoSettings.space_pairs`).

`PreferenceCollator` pads a batch into rows `[chosen..., rejected...]` for a
single forward pass; labels are -100 on the prompt and padding. With
`share_prompt=True` it instead returns the prompts once (left-padded) and the
answers as rows `[chosen 0, rejected 0, chosen 1, ...]` (right-padded), for a
forward that runs each prompt once and both answers on its KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any

import torch

from unleak.errors import UnleakError
from unleak.jsonl import read_jsonl, require


def _render(tokenizer: Any, messages: list[dict], **kw: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def _answer_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:
        return ids[: ids.index(eos) + 1]
    return ids + [eos]


def _pair_texts(example: dict[str, Any], tokenizer: Any) -> tuple[str, dict[str, str]]:
    """The rendered prompt (what both sides' renderings share of it) and each side's full rendering."""
    prompt = example["prompt"]
    # a final assistant message is half-written and its answer continues it; an answer in the user's
    # role (a pair for PII in a user turn) is the user's next message, rendered as its own turn
    cont = prompt[-1]["role"] == "assistant" == example["chosen"][0]["role"]
    prompt_text = _render(tokenizer, prompt, add_generation_prompt=not cont, continue_final_message=cont)
    texts = {}
    for side in ("chosen", "rejected"):
        if cont:  # the answer continues the half-written final message
            answer = {"role": "assistant", "content": prompt[-1]["content"] + example[side][0]["content"]}
            full = _render(tokenizer, prompt[:-1] + [answer])
        else:
            full = _render(tokenizer, prompt + example[side])
        prompt_text = "".join(a for a, _ in takewhile(lambda ab: ab[0] == ab[1], zip(prompt_text, full)))
        texts[side] = full
    return prompt_text, texts


def _finish(prompt_ids: list[int], chosen: list[int], rejected: list[int], max_length: int,
            max_prompt_length: int) -> dict[str, list[int]]:
    # The leading tokens both answers share carry no preference: they join the prompt, so the
    # loss starts where the answers part (a half-written answer's continuation, as in the original).
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt_ids = (prompt_ids + chosen[:shared])[-max_prompt_length:]
    budget = max_length - len(prompt_ids)
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen[shared:][:budget], "rejected_ids": rejected[shared:][:budget]}


def tokenize_pair(example: dict[str, Any], tokenizer: Any, max_length: int, max_prompt_length: int
                  ) -> dict[str, list[int]]:
    prompt_text, texts = _pair_texts(example, tokenizer)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    chosen = _answer_ids(tokenizer, texts["chosen"][len(prompt_text):])
    rejected = _answer_ids(tokenizer, texts["rejected"][len(prompt_text):])
    return _finish(prompt_ids, chosen, rejected, max_length, max_prompt_length)


def tokenize_space_pair(example: dict[str, Any], tokenizer: Any, max_length: int, max_prompt_length: int
                        ) -> dict[str, list[int]] | None:
    """The pair cut after the whitespace its answers share, where one answer's tokenisation has that
    whitespace as a token of its own; None where neither has (or the answers share no trailing space).

    `tokenize_pair` cuts where the answers' tokens part: `Call` + ` [REDACTED PHONE]` against `Call` +
    ` ` `5` `5` `5` ... The challenge's attack cuts the text before the value, so its context ends in the
    space (`Call `), and where the tokenizer writes that space as a lone token before the value (before
    digits: SmolLM2, Llama 3, Qwen) this is the state the memorised value naturally follows, the one a
    fine-tuned model leaks from most readily and the one `tokenize_pair` never trains: this pair's
    prompt ends in that space token, and its answers are `[REDACTED PHONE]...` against `555...`.
    Where the space is part of the value's first token (` Reed`) a prompt ending in it is a state no
    text has, and no pair is made.
    """
    prompt_text, texts = _pair_texts(example, tokenizer)
    chosen_text, rejected_text = (texts[side][len(prompt_text):] for side in ("chosen", "rejected"))
    common = "".join(a for a, _ in takewhile(lambda ab: ab[0] == ab[1], zip(chosen_text, rejected_text)))
    if not common.strip() or common.rstrip() == common:
        return None
    ws_ids = tokenizer(common, add_special_tokens=False)["input_ids"]
    # one side's own tokens must pass through the cut: its text tokenised alone starts with these ids
    if not any(tokenizer(text, add_special_tokens=False)["input_ids"][: len(ws_ids)] == ws_ids
               for text in (chosen_text, rejected_text)):
        return None
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"] + ws_ids
    return _finish(prompt_ids, _answer_ids(tokenizer, chosen_text[len(common):]),
                   _answer_ids(tokenizer, rejected_text[len(common):]), max_length, max_prompt_length)


def space_pairs(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, max_prompt_length: int
                ) -> tuple[list[dict[str, Any]], list[dict[str, list[int]]]]:
    """`tokenize_space_pair` of each row where it gives one: the rows (marked `split: "space"`) and the
    tokenised pairs, in `rows`' order."""
    marked, tokenised = [], []
    for row in rows:
        pair = tokenize_space_pair(row, tokenizer, max_length, max_prompt_length)
        if pair is not None:
            marked.append({**row, "split": "space"})
            tokenised.append(pair)
    return marked, tokenised


def read_pair_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file in TRL's conversational preference format, checked (file:line:field)."""
    rows = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        for key in ("prompt", "chosen", "rejected"):
            value = require(row, key, list, where)
            if not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
                raise UnleakError(f"{where}: field {key!r} must be a non-empty list of {{role, content}} messages")
        rows.append(row)
    if not rows:
        raise UnleakError(f"{path}: no preference pairs")
    return rows


def tokenize_pairs(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, max_prompt_length: int
                   ) -> list[dict[str, list[int]]]:
    return [tokenize_pair(row, tokenizer, max_length, max_prompt_length) for row in rows]


def read_pairs(path: str | Path, tokenizer: Any, max_length: int, max_prompt_length: int) -> list[dict]:
    """Tokenised pairs of a JSONL file in TRL's conversational preference format."""
    return tokenize_pairs(read_pair_rows(path), tokenizer, max_length, max_prompt_length)


def pair_tokens(row: dict[str, list[int]]) -> int:
    """The tokens a tokenised pair puts through the model with a shared prompt: the prompt and both answers."""
    return len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


@dataclass
class PreferenceCollator:
    pad_token_id: int
    share_prompt: bool = False

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if self.share_prompt:
            answers = [ex[f"{side}_ids"] for ex in batch for side in ("chosen", "rejected")]
            return {"prompt_ids": _pad([ex["prompt_ids"] for ex in batch], self.pad_token_id, left=True),
                    "prompt_mask": _pad([[1] * len(ex["prompt_ids"]) for ex in batch], 0, left=True),
                    "answer_ids": _pad(answers, self.pad_token_id), "answer_labels": _pad(answers, -100),
                    "answer_mask": _pad([[1] * len(a) for a in answers], 0)}
        ids, labels = [], []
        for side in ("chosen", "rejected"):
            for ex in batch:
                ids.append(ex["prompt_ids"] + ex[f"{side}_ids"])
                labels.append([-100] * len(ex["prompt_ids"]) + ex[f"{side}_ids"])
        input_ids = _pad(ids, self.pad_token_id)
        return {"input_ids": input_ids, "labels": _pad(labels, -100),
                "attention_mask": _pad([[1] * len(r) for r in ids], 0)}


def tokenize_chat_for_sft(messages: list[dict], tokenizer: Any, max_length: int, loss_on: str = "assistant"
                          ) -> dict[str, list[int]]:
    """A whole chat as ids with labels on the assistant turns (each answer with its EOS), or on every token."""
    ids: list[int] = []
    labels: list[int] = []
    for i, m in enumerate(messages):
        head = _render(tokenizer, messages[:i], add_generation_prompt=m["role"] == "assistant") if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not upto.startswith(head):
            raise UnleakError("the chat template does not render a chat incrementally")
        new = tokenizer(upto[len(_render(tokenizer, messages[:i])) if i else 0:], add_special_tokens=False)
        if m["role"] == "assistant":
            gen_prompt = tokenizer(head[len(_render(tokenizer, messages[:i])):], add_special_tokens=False)
            n = len(gen_prompt["input_ids"])
            answer = new["input_ids"][n:]
            scored = answer[: answer.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in answer else answer
            ids += new["input_ids"][:n] + answer
            labels += [-100] * n + scored + [-100] * (len(answer) - len(scored))
        else:
            ids += new["input_ids"]
            labels += [-100] * len(new["input_ids"])
    if loss_on == "all":
        labels = list(ids)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


@dataclass
class CausalCollator:
    pad_token_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return {"input_ids": _pad([b["input_ids"] for b in batch], self.pad_token_id),
                "labels": _pad([b["labels"] for b in batch], -100),
                "attention_mask": _pad([[1] * len(b["input_ids"]) for b in batch], 0)}
