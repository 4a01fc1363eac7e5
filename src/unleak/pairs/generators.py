"""Generators of candidate answers behind one interface: `generate(requests) -> list[str]`.

- `LocalCandidateGenerator`: any HF model through the batched `CFGGenerator`
  (guidance scale 1: plain sampling under the generator's system prompt).
- `OpenAICandidateGenerator`: any OpenAI-compatible endpoint (OpenAI,
  Together, a vLLM server, `unleak serve`) through the official `openai`
  client: bounded concurrency, retries with exponential backoff and timeouts
  (the client's own), the key read from an environment variable and never
  logged. A half-written answer (the `completion` mode) is sent as a final
  assistant message with vLLM's `continue_final_message` extension.

`build_generator(name, ...)` picks one by name, like the detector registry.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from unleak.chat import Message
from unleak.config import CandidateConfig, GuidanceConfig, PromptConfig, SamplingConfig
from unleak.errors import UnleakError


@dataclass(frozen=True)
class CandidateRequest:
    """One candidate to draw: the chat (system prompt included), whether its last message is continued, a seed."""

    messages: list[Message]
    continue_final: bool
    seed: int


class CandidateGenerator(Protocol):
    name: str

    def generate(self, requests: Sequence[CandidateRequest]) -> list[str]: ...


class LocalCandidateGenerator:
    """Samples candidates from a local model with the batched decoder."""

    def __init__(self, model: Any, tokenizer: Any, config: CandidateConfig | None = None,
                 prompts: PromptConfig | None = None, max_batch_requests: int = 16, name: str = "local") -> None:
        from unleak.decoding.generator import CFGGenerator

        self.config = config or CandidateConfig()
        prompts = prompts or PromptConfig()
        # The generator prompt is the "positive" one of this decoder; g = 1 never uses the negative.
        self.decoder = CFGGenerator(model, tokenizer, PromptConfig(positive=prompts.generator),
                                    max_batch_requests=max_batch_requests)
        self.name = name

    @classmethod
    def from_name(cls, model: str = "default", config: CandidateConfig | None = None,
                  device: str | None = None, dtype: str | None = None, **kwargs: Any) -> LocalCandidateGenerator:
        from unleak.models import load_model, load_tokenizer

        return cls(load_model(model, device=device, dtype=dtype), load_tokenizer(model), config,
                   name=f"local:{model}", **kwargs)

    def generate(self, requests: Sequence[CandidateRequest]) -> list[str]:
        from unleak.decoding.generator import GenerationRequest

        c = self.config
        gen_requests = [
            GenerationRequest(
                messages=r.messages,
                guidance=GuidanceConfig(guidance_scale=1.0),
                sampling=SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                                        top_p=c.top_p, seed=r.seed, no_repeat_ngram_size=c.no_repeat_ngram_size),
            )
            for r in requests
        ]
        # Requests of similar length decode together (less padding); results go back in input order.
        order = sorted(range(len(requests)), key=lambda i: len(str(requests[i].messages)))
        results = self.decoder.generate([gen_requests[i] for i in order])
        texts = [""] * len(requests)
        for i, res in zip(order, results):
            texts[i] = res.text
        return texts


class OpenAICandidateGenerator:
    """Candidates from an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 config: CandidateConfig | None = None, concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 5) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.config = config or CandidateConfig()
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.name = f"openai:{model}"
        if self.config.no_repeat_ngram_size:
            raise UnleakError("no_repeat_ngram_size is a setting of the local generator; OpenAI-compatible "
                              "endpoints do not take it (max_repetition filters looping candidates instead)")
        if not os.environ.get(api_key_env) and base_url is None:
            raise UnleakError(f"the OpenAI generator needs an API key in ${api_key_env} (or --base-url "
                              "of a local server)")

    def _client(self) -> Any:
        from unleak.decoding.endpoint import async_client

        return async_client(self.base_url, self.api_key_env, self.timeout, self.max_retries)

    def generate(self, requests: Sequence[CandidateRequest]) -> list[str]:
        return asyncio.run(self._generate_all(list(requests)))

    async def _generate_all(self, requests: list[CandidateRequest]) -> list[str]:
        import openai

        client = self._client()
        limit = asyncio.Semaphore(self.concurrency)
        c = self.config

        async def one(r: CandidateRequest) -> str:
            extra: dict[str, Any] = {}
            if r.continue_final:
                from unleak.decoding.endpoint import CONTINUE_FINAL_MESSAGE

                extra = dict(CONTINUE_FINAL_MESSAGE)
            async with limit:
                try:
                    resp = await client.chat.completions.create(
                        model=self.model, messages=r.messages, temperature=c.temperature, top_p=c.top_p,
                        max_tokens=c.max_new_tokens, seed=r.seed, extra_body=extra or None,
                    )
                except openai.APIError as exc:
                    raise UnleakError(f"candidate generator {self.name} at {self.base_url or 'api.openai.com'}: "
                                      f"{type(exc).__name__}: {getattr(exc, 'message', exc)}") from None
            return resp.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()


def build_generator(name: str, model: str | None = None, config: CandidateConfig | None = None,
                    **options: Any) -> CandidateGenerator | None:
    """`local` (model: 'default', a path or hub id), `openai` (model: the endpoint's model name) or `none`.

    `none` is for the model-free `redact` mode alone; pairs refuse other modes without a generator.
    """
    if name == "none":
        return None
    if name == "local":
        return LocalCandidateGenerator.from_name(model or "default", config,
                                                 **{k: v for k, v in options.items() if k in ("device", "dtype")})
    if name == "openai":
        if not model:
            raise UnleakError("the openai generator needs --model (the endpoint's model name)")
        keep = ("base_url", "api_key_env", "concurrency", "timeout", "max_retries")
        return OpenAICandidateGenerator(model, config=config, **{k: v for k, v in options.items()
                                                                  if k in keep and v is not None})
    raise UnleakError(f"unknown generator {name!r}; use 'local', 'openai' or 'none'")
