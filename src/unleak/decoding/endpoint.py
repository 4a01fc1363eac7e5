"""`EndpointGenerator`: the `CFGGenerator` interface (`generate_grouped`) over a deployed model's
OpenAI-compatible API, so the evaluation measures a deployment as its users meet it.

The endpoint (`unleak serve`, vLLM, any OpenAI-compatible server) decides the
system prompt, the guidance and the adapter: with `unleak serve`, the API
key's policy. A request is sent as its kind asks:

- `messages`: `/v1/chat/completions`; a final assistant message (a
  half-written answer) carries vLLM's `continue_final_message` extension
  (`unleak serve` continues it by itself);
- `prompt`: the same, parsed into messages when it is a chat-formatted string;
- `text`: `/v1/completions`, the raw text as the extraction attack sends it
  (`unleak serve` continues it behind the policy's system prompt; vLLM as is,
  asked not to put a BOS token in front: `add_special_tokens` false).

Greedy requests go out with temperature 0. Results carry the text and its
tokens under the local `tokenizer` (the served model's: the attack renders
conversations with its chat template). An answer the endpoint cut short of the
tokens asked for (a policy's `max_tokens`) is an error, not a shorter answer
counted as if whole. Requests run `concurrency` at a time with the `openai`
client's retries and timeouts; the key is read from `api_key_env` and never
logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from unleak.config import EndpointConfig
from unleak.decoding.generator import GenerationRequest, GenerationResult
from unleak.errors import UnleakError


#: vLLM's chat extension that continues a final assistant message instead of opening a new one
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}


def async_client(base_url: str | None, api_key_env: str, timeout: float, max_retries: int) -> Any:
    """An `openai.AsyncOpenAI` for an OpenAI-compatible endpoint, its key read from `$api_key_env` ("EMPTY"
    without one: local servers take any); the key stays in the client, never printed or logged."""
    from openai import AsyncOpenAI

    return AsyncOpenAI(api_key=os.environ.get(api_key_env) or "EMPTY", base_url=base_url, timeout=timeout,
                       max_retries=max_retries)


def endpoint_key_id(config: EndpointConfig) -> str | None:
    """A short digest of the API key the endpoint is called with (None without one): with `unleak serve` the
    key picks the policy, so cached results are keyed by it; the key itself is never stored."""
    key = os.environ.get(config.api_key_env)
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else None


class EndpointGenerator:
    """Decodes `GenerationRequest`s on an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, config: EndpointConfig, tokenizer: Any) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.model_name = config.model

    @property
    def name(self) -> str:
        return f"{self.model_name or '?'}@{self.config.url}"

    def _client(self) -> Any:
        return async_client(self.config.url, self.config.api_key_env, self.config.timeout_s, self.config.max_retries)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [group[0] for group in self.generate_grouped([[r] for r in requests])]

    def generate_grouped(self, groups: Sequence[Sequence[GenerationRequest]],
                         on_batch: Callable[[int], None] | None = None) -> list[list[GenerationResult]]:
        """Every request of `groups`, `concurrency` in flight; results grouped in input order. `on_batch(1)` is
        called as each group completes (progress)."""
        for group in groups:
            for r in group:
                check_request(r)
        return asyncio.run(self._run(groups, on_batch))

    async def _run(self, groups: Sequence[Sequence[GenerationRequest]],
                   on_batch: Callable[[int], None] | None) -> list[list[GenerationResult]]:
        client = self._client()
        try:
            if self.model_name is None:
                self.model_name = await self._first_model(client)
            limit = asyncio.Semaphore(self.config.concurrency)

            async def one(request: GenerationRequest) -> GenerationResult:
                async with limit:
                    return await self._call(client, request)

            async def group(requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
                out = list(await asyncio.gather(*(one(r) for r in requests)))
                if on_batch is not None:
                    on_batch(1)
                return out

            return list(await asyncio.gather(*(group(g) for g in groups)))
        finally:
            await client.close()

    async def _first_model(self, client: Any) -> str:
        import openai

        try:
            page = await client.models.list()
        except openai.APIError as exc:
            raise self._error(exc) from None
        if not page.data:
            raise UnleakError(f"endpoint {self.config.url} lists no model: name one (endpoint model)")
        return page.data[0].id

    def _error(self, exc: Exception) -> UnleakError:
        status = getattr(exc, "status_code", None)
        what = f"HTTP {status}" if status else type(exc).__name__
        return UnleakError(f"endpoint {self.name}: {what}: {getattr(exc, 'message', exc)}")

    async def _call(self, client: Any, request: GenerationRequest) -> GenerationResult:
        import openai

        s = request.sampling
        common: dict[str, Any] = {"model": self.model_name, "max_tokens": s.max_new_tokens,
                                  "temperature": s.temperature, "top_p": s.top_p}
        if s.seed is not None:
            common["seed"] = s.seed
        if s.stop:
            common["stop"] = list(s.stop)
        extra: dict[str, Any] = {"top_k": s.top_k} if s.top_k else {}
        messages = request.messages
        if messages is None and request.prompt is not None:
            from unleak.chat import messages_from_prompt

            messages = messages_from_prompt(request.prompt).messages
        try:
            if messages is not None:
                if messages[-1]["role"] == "assistant":  # a half-written answer, continued
                    extra |= CONTINUE_FINAL_MESSAGE
                resp = await client.chat.completions.create(messages=messages, extra_body=extra or None, **common)
                choice = resp.choices[0]
                text = choice.message.content or ""
            else:
                # the attack's text as its tokens, no BOS added (vLLM's add_special_tokens; unleak serve adds none)
                extra["add_special_tokens"] = False
                resp = await client.completions.create(prompt=request.text, extra_body=extra, **common)
                choice = resp.choices[0]
                text = choice.text or ""
        except openai.APIError as exc:
            raise self._error(exc) from None
        usage = resp.usage
        if (choice.finish_reason == "length" and usage is not None
                and usage.completion_tokens < s.max_new_tokens):
            raise UnleakError(f"endpoint {self.name} stopped after {usage.completion_tokens} of the "
                              f"{s.max_new_tokens} tokens asked (its max_tokens limit, e.g. an unleak serve "
                              "policy's): raise the limit or ask for fewer tokens")
        return GenerationResult(text, self.tokenizer(text, add_special_tokens=False)["input_ids"],
                                choice.finish_reason or "stop", request.guidance.guidance_scale,
                                request.guidance.cfg_space, usage.prompt_tokens if usage is not None else 0)


def check_request(request: GenerationRequest) -> None:
    """Refuse what an endpoint cannot be asked: its own guidance and adapter are the server's to set."""
    if request.guidance.guidance_scale != 1:
        raise UnleakError("an endpoint is evaluated as served: its server sets the guidance (with unleak serve, "
                          "the API key's policy); ask for guidance scale 1")
    if request.input_ids is not None:
        raise UnleakError("an endpoint takes text, not token ids (send text=...)")
    if request.sampling.no_repeat_ngram_size:
        raise UnleakError("no_repeat_ngram_size is a setting of the local generator; endpoints do not take it")
    if request.top_logprobs is not None:
        raise UnleakError("the endpoint generator does not ask for log-probabilities")
