"""`JournaledGenerator` and `BatchJournal`: an evaluation's generation and scoring made resumable.

A model's configurations are evaluated together and saved when all are done,
which on the LLM-PC data is thousands of attack prompts per model. This wrapper
around a generator (`CFGGenerator`, `EndpointGenerator`) appends every finished
chunk of request groups to a journal (`append_jsonl`: flushed, a torn last line
skipped on reading), keyed by a hash of each request; a rerun of the same
evaluation takes what the journal holds and decodes only the rest. Chunks are a
whole number of the generator's batches, so an uninterrupted run decodes the
same batches as without the journal. The evaluation deletes a journal once its
configurations are saved.

`BatchJournal` does the same for a batched scoring pass (multiple-choice
questions, `eval.utility`): the finished batches' scores are appended, four
at a time, under a hash of everything the pass depends on, and a rerun of
the same pass skips the batches journaled. The batches are drawn before the
journal is read, so a resumed pass scores the same batches, and gives the
same numbers, as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unleak.config import settings_hash
from unleak.decoding.generator import GenerationRequest, GenerationResult
from unleak.jsonl import append_jsonl, read_journal

#: batches of the generator per journal chunk (what an interruption loses at most)
CHUNK_BATCHES = 4


def request_key(request: GenerationRequest) -> str:
    """What a request's result depends on: its prompt, guidance, sampling and adapters (not its cancel event
    or log-probabilities, which the evaluation never asks for)."""
    return settings_hash({"messages": request.messages, "prompt": request.prompt, "text": request.text,
                          "input_ids": request.input_ids, "negative_input_ids": request.negative_input_ids,
                          "guidance": asdict(request.guidance), "sampling": asdict(request.sampling),
                          "adapter": request.adapter, "negative_adapter": request.negative_adapter})


def _row(key: str, r: GenerationResult) -> dict[str, Any]:
    return {"key": key, **r.as_dict(), "prompt_tokens": r.prompt_tokens}


def _result(row: dict[str, Any]) -> GenerationResult:
    return GenerationResult(row["text"], row["token_ids"], row["finish_reason"], row["guidance_scale"],
                            row["cfg_space"], row["prompt_tokens"])


class JournaledGenerator:
    """`inner`'s `generate_grouped`, journaled to `path`; every other attribute is `inner`'s."""

    def __init__(self, inner: Any, path: str | Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.done: dict[str, GenerationResult] = {}
        for row in read_journal(self.path):
            try:
                self.done[row["key"]] = _result(row)
            except (KeyError, TypeError):
                continue
        self.resumed = len(self.done)
        size = getattr(inner, "max_batch_requests", None) or getattr(getattr(inner, "config", None),
                                                                      "concurrency", 16)
        self.chunk_groups = CHUNK_BATCHES * size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate_grouped(self, groups: Sequence[Sequence[GenerationRequest]],
                         on_batch: Callable[[int], None] | None = None) -> list[list[GenerationResult]]:
        keys = [[request_key(r) for r in group] for group in groups]
        todo = [i for i, ks in enumerate(keys) if not all(k in self.done for k in ks)]
        if on_batch is not None and len(todo) < len(groups):
            on_batch(len(groups) - len(todo))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(todo), self.chunk_groups):
            chunk = todo[start:start + self.chunk_groups]
            results = self.inner.generate_grouped([groups[i] for i in chunk], on_batch)
            rows = []
            for i, group_results in zip(chunk, results, strict=True):
                for key, result in zip(keys[i], group_results, strict=True):
                    self.done[key] = result
                    if result.finish_reason != "cancelled":
                        rows.append(_row(key, result))
            append_jsonl(self.path, rows)
        return [[self.done[k] for k in ks] for ks in keys]


class BatchJournal:
    """The finished batches of one scoring pass in the journal at `path` (`None`: nothing journaled), under
    `key`, a hash of `key_parts`: what the pass depends on (its model's inputs, heads, guidance settings,
    batch size; the caller keys the file by model). Batches are appended `CHUNK_BATCHES` at a time (one flush
    to disk each), and by `flush` at the pass's end."""

    def __init__(self, path: str | Path | None, *key_parts: Any) -> None:
        self.path = Path(path) if path is not None else None
        self.key = settings_hash(*key_parts)
        self.done: dict[int, Any] = {}
        self.pending: list[dict[str, Any]] = []
        if self.path is not None:
            for row in read_journal(self.path):
                if row.get("pass") == self.key and isinstance(row.get("batch"), int) and "scores" in row:
                    self.done[row["batch"]] = row["scores"]

    def put(self, batch: int, scores: Any) -> None:
        """Record batch number `batch`'s `scores` (JSON-able)."""
        self.done[batch] = scores
        self.pending.append({"pass": self.key, "batch": batch, "scores": scores})
        if len(self.pending) >= CHUNK_BATCHES:
            self.flush()

    def flush(self) -> None:
        if self.path is not None and self.pending:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, self.pending)
        self.pending = []
