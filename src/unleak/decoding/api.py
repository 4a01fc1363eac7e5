"""The stage's library entry points: `run_generate` (what `unleak generate` calls) and `query`.

`query(prompt)` is the LLM-PC submission interface (`def query(prompt)` in the
challenge's `main.py`): it loads the configured model once, then answers a
plain user message or a full chat-formatted string with guided decoding.
Its settings come from `QueryConfig`, whose defaults can be set by the
environment (`UNLEAK_MODEL`, `UNLEAK_ADAPTER`, `UNLEAK_GUIDANCE_SCALE`,
`UNLEAK_CFG_SPACE`, `UNLEAK_MAX_NEW_TOKENS`) and per call by keyword.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unleak.config import GuidanceConfig, PromptConfig, SamplingConfig
from unleak.decoding.generator import (CFGGenerator, GenerationRequest, GenerationResult, StreamEvent,
                                       negative_adapter_for)
from unleak.errors import UnleakError
from unleak.jsonl import read_jsonl


@dataclass(frozen=True)
class QueryConfig:
    """What `query` serves."""

    model: str = "default"
    adapter: str | None = None
    guidance_scale: float = GuidanceConfig.guidance_scale
    cfg_space: str = GuidanceConfig.cfg_space
    max_new_tokens: int = 256
    temperature: float = 0.0
    device: str | None = None
    dtype: str | None = None

    @classmethod
    def from_env(cls) -> QueryConfig:
        env = os.environ
        return cls(
            model=env.get("UNLEAK_MODEL", cls.model),
            adapter=env.get("UNLEAK_ADAPTER") or None,
            guidance_scale=float(env.get("UNLEAK_GUIDANCE_SCALE", cls.guidance_scale)),
            cfg_space=env.get("UNLEAK_CFG_SPACE", cls.cfg_space),
            max_new_tokens=int(env.get("UNLEAK_MAX_NEW_TOKENS", cls.max_new_tokens)),
        )


@functools.lru_cache(maxsize=4)
def cached_generator(model: str, adapter: str | None, device: str | None, dtype: str | None) -> CFGGenerator:
    """One loaded model + generator per (model, adapter, device, dtype), kept for the process."""
    from unleak.models import load_model, load_tokenizer

    return CFGGenerator(load_model(model, adapter=adapter, device=device, dtype=dtype), load_tokenizer(model))


def query(prompt: str, **overrides: Any) -> str:
    """Answer `prompt` (a user message or a chat string) with the configured guided model."""
    fields = {f.name for f in dataclasses.fields(QueryConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise UnleakError(f"query: unknown setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    cfg = dataclasses.replace(QueryConfig.from_env(), **overrides)
    gen = cached_generator(cfg.model, cfg.adapter, cfg.device, cfg.dtype)
    req = GenerationRequest(
        prompt=prompt,
        guidance=GuidanceConfig(cfg.guidance_scale, cfg.cfg_space),  # type: ignore[arg-type]
        sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
    )
    return gen.generate([req])[0].text


def read_generation_requests(path: str | Path, guidance: GuidanceConfig,
                             sampling: SamplingConfig) -> list[GenerationRequest]:
    """Requests from JSONL rows `{"prompt": str}` or `{"messages": [...]}` (errors name file:line:field)."""
    from unleak.chat import validate_messages

    requests = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise UnleakError(f"{where}: expected a JSON object")
        if "messages" in row:
            messages = validate_messages(row["messages"], where=f"{where}: field 'messages'")
            requests.append(GenerationRequest(messages=messages, guidance=guidance, sampling=sampling))
        elif "prompt" in row:
            if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                raise UnleakError(f"{where}: field 'prompt' must be a non-empty string")
            requests.append(GenerationRequest(prompt=row["prompt"], guidance=guidance, sampling=sampling))
        else:
            raise UnleakError(f"{where}: missing field 'prompt' or 'messages'")
    if not requests:
        raise UnleakError(f"{path}: no requests")
    return requests


def run_generate(
    requests: list[GenerationRequest],
    model: str = "default",
    adapter: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 16,
    prompts: PromptConfig | None = None,
    negative: str = "adapter",
) -> Iterator[StreamEvent]:
    """Load the model once and stream the decoding of `requests` (see `CFGGenerator.stream`).

    `negative`: "adapter" (the method) or "base" (the guided negative rows without `adapter`)."""
    from unleak.models import load_model, load_tokenizer

    negative_adapter = negative_adapter_for(negative, adapter)
    gen = CFGGenerator(load_model(model, adapter=adapter, device=device, dtype=dtype), load_tokenizer(model),
                       prompts=prompts, max_batch_requests=batch_size,
                       negative_adapter=negative_adapter)
    encoded = [gen.encode(r) for r in requests]  # every request validated before any output
    return gen.stream_encoded(encoded)


__all__ = ["GenerationResult", "QueryConfig", "query", "read_generation_requests", "run_generate"]
