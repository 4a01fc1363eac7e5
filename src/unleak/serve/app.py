"""The OpenAI-compatible HTTP app: `/v1/chat/completions` and `/v1/completions` (plain and SSE streaming),
`/v1/models`, `/health`, `/metrics`.

`/v1/completions` continues raw text behind each system prompt's chat header,
with no template: how a served model meets the extraction attack's text.

`create_app(generator, policies, model_name)` builds a FastAPI app around a
`Batcher`. The caller's API key (`Authorization: Bearer ...`) selects a
`Policy`: guidance scale and space, adapter (or none) and token budget.
`guidance_scale` / `cfg_space` in the body (the `openai` client's
`extra_body`) are honoured only when the policy allows overriding (else 403).
Errors use OpenAI's JSON shape: 401 unknown key, 403 override refused, 422
malformed body, 429 queue full, 400 a request the generator refuses, 503
shutting down.

`logprobs` / `top_logprobs` return each token's log-probability under the
distribution it was drawn from (the guided mix, see `CFGGenerator`) and its
likeliest alternatives, only where the policy allows them
(`max_top_logprobs`; refused by default: 403).

`n` > 1 asks for several choices: they are queued together (all or none) and
decode in the same batch; with a `seed`, choice i samples with seed + i, so a
call is reproducible choice by choice. Usage counts the prompt once and the
completion tokens of every choice (as OpenAI does).

A policy may filter its answers (`redact_output`, `unleak.serve.redaction`):
PII its profile's detector finds becomes `[REDACTED TYPE]`, whole answers and
streams alike (a stream releases each sentence once it is complete).

Privacy by default: prompts and completions are never logged; a log line
carries request id, policy, token counts, finish reason and latency.

A client that goes away (a closed stream, a timed-out call) is noticed within
`DISCONNECT_POLL_S`, and its request stops decoding (or is dropped from the
queue): its batch slot goes to others. `/health` counts the requests by how
they ended.

`GET /metrics` exposes Prometheus metrics (`unleak.serve.metrics`: requests
by policy and finish, tokens, latency, time to first token, queue and batch
sizes), like `/health` without a key: keep the port on an internal network.

On shutdown (the app's lifespan; uvicorn first lets open requests finish
within its graceful timeout) the batcher is closed: what still waits or
decodes ends "cancelled" and its worker thread is joined.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from unleak.config import GuidanceConfig, SamplingConfig
from unleak.decoding.generator import (CFGGenerator, GenerationRequest, GenerationResult, TokenLogprob,
                                       negative_adapter_for)
from unleak.errors import UnleakError
from unleak.pii.base import canonical_type
from unleak.serve.batcher import Batcher, BatcherClosed, QueueFull
from unleak.serve.metrics import ServerMetrics
from unleak.serve.policies import MAX_TOP_LOGPROBS, Policy, PolicySet
from unleak.serve.redaction import OutputRedactor, StreamRedactor

log = logging.getLogger("unleak.serve")

#: how often a request's connection is checked while it waits or decodes
DISCONNECT_POLL_S = 0.1
#: the log-probability reported for a token the guided distribution excludes (JSON has no -inf; OpenAI's floor)
LOGPROB_FLOOR = -9999.0


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Call(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128)
    guidance_scale: float | None = Field(None, gt=0, le=50)
    cfg_space: Literal["log", "prob"] | None = None


class CompletionRequest(_Call):
    """`/v1/completions`: raw text continued behind each system prompt (no chat template), as the
    extraction attack sends it to a served model."""

    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None


class ChatCompletionRequest(_Call):
    """`/v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


async def cancel_when_disconnected(request: Request, cancel: threading.Event, rid: str, policy: str) -> None:
    """Set `cancel` as soon as the client of `request` has disconnected (run as a task, cancelled when the
    request is answered), so the batcher stops decoding for nobody."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            log.info("request %s policy=%s cancelled: the client disconnected", rid, policy)
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


def create_app(generator: CFGGenerator, policies: PolicySet, model_name: str = "unleak", max_batch: int = 16,
               max_queue: int = 64, continuous: bool = True) -> FastAPI:
    """The app around `generator`: `max_batch` requests decode at once, `max_queue` wait (then 429); with
    `continuous`, waiting requests join a running batch between decode steps (see `Batcher`)."""
    metrics = ServerMetrics()
    redactors = output_redactors(policies)
    batcher = Batcher(generator, max_batch=max_batch, max_queue=max_queue, continuous=continuous,
                      on_finish=metrics.observe)
    metrics.watch(batcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        stopped = await asyncio.to_thread(batcher.close)
        log.info("batcher %s; requests by finish: %s", "stopped" if stopped else "still stopping",
                 dict(batcher.finished))

    app = FastAPI(title="unleak", version="1", lifespan=lifespan)

    @functools.lru_cache(maxsize=65536)
    def token_text(token_id: int) -> tuple[str, list[int] | None]:
        """A token's text, and its UTF-8 bytes (None where it is part of a character)."""
        text = generator.tokenizer.decode([token_id])
        return text, None if "\ufffd" in text else list(text.encode())

    def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
        """A chat choice's `logprobs` object (or a chunk's part of it)."""
        def item(token_id: int, logprob: float) -> dict[str, Any]:
            text, raw = token_text(token_id)
            return {"token": text, "logprob": max(logprob, LOGPROB_FLOOR), "bytes": raw}

        return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                            for e in entries]}

    def text_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        """A text completion's `logprobs` object (the legacy shape), offsets within the completion."""
        tokens = [token_text(e.token_id)[0] for e in entries]
        starts = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset))[:len(tokens)]
        return {"tokens": tokens, "token_logprobs": [max(e.logprob, LOGPROB_FLOOR) for e in entries],
                "top_logprobs": [{token_text(t)[0]: max(lp, LOGPROB_FLOOR) for t, lp in e.top} for e in entries],
                "text_offset": starts}

    app.state.batcher = batcher
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(422, f"invalid request: {where}: {first.get('msg', 'malformed body')}",
                      "invalid_request_error", "invalid_body")

    def policy_of(request: Request) -> Policy | None:
        auth = request.headers.get("authorization", "")
        return policies.for_key(auth[7:].strip() if auth.lower().startswith("bearer ") else None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "closing" if batcher.closing else "ok", "queued": batcher.jobs.qsize(),
                "finished": dict(batcher.finished)}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if policy_of(request) is None:
            return _error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "unleak"}]}

    def settings(policy: Policy, body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
                 top_logprobs: int | None) -> tuple[GuidanceConfig, SamplingConfig] | JSONResponse:
        """The call's guidance and sampling under its policy, or the error that refuses it."""
        if (body.guidance_scale is not None or body.cfg_space is not None) and not policy.allow_override:
            return _error(403, f"policy {policy.name!r} does not allow overriding guidance", "permission_error",
                          "override_not_allowed")
        if top_logprobs is not None and (policy.max_top_logprobs is None or top_logprobs > policy.max_top_logprobs):
            allowed = "no log-probabilities" if policy.max_top_logprobs is None else \
                f"at most {policy.max_top_logprobs} alternatives per token"
            return _error(403, f"policy {policy.name!r} allows {allowed}", "permission_error", "logprobs_not_allowed")
        try:
            guidance = GuidanceConfig(body.guidance_scale or policy.guidance_scale,
                                      body.cfg_space or policy.cfg_space)  # type: ignore[arg-type]
            stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
            sampling = SamplingConfig(max_new_tokens=min(max_tokens or policy.max_tokens, policy.max_tokens),
                                      temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stop)
        except UnleakError as exc:
            return _error(400, str(exc), "invalid_request_error")
        return guidance, sampling

    async def answer(request: Request, policy: Policy, body: ChatCompletionRequest | CompletionRequest,
                     inputs: list[dict[str, Any]], guidance: GuidanceConfig, sampling: SamplingConfig,
                     top_logprobs: int | None, chat: bool) -> Any:
        """Queue `n` choices of each of `inputs` (`GenerationRequest` fields: the prompt), all or none; answer
        with them whole or streamed, as a chat completion or a text completion. Choice `p * n + i` is input
        p's i-th, sampled with seed + i."""
        n = body.n
        if n * len(inputs) > max_queue:
            return _error(400, f"{n * len(inputs)} choices are more than this server queues at once ({max_queue})",
                          "invalid_request_error", "n_too_large")
        cancel = threading.Event()  # one for the call: its client leaving ends every choice
        gen_requests = [
            GenerationRequest(**given, guidance=guidance,
                              sampling=replace(sampling, seed=None if sampling.seed is None else sampling.seed + i),
                              adapter=policy.adapter or False,
                              negative_adapter=negative_adapter_for(policy.negative, policy.adapter), cancel=cancel,
                              top_logprobs=top_logprobs)
            for given in inputs for i in range(n)]
        count = len(gen_requests)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        redactor = redactors.get(policy.redact_output)  # type: ignore[arg-type]

        def count_redacted(labels: Counter) -> None:
            for label, k in labels.items():
                metrics.redacted.labels(policy.name, canonical_type(label)).inc(k)
        started = time.time()
        try:
            events = batcher.submit_all(gen_requests, label=policy.name, choices=n)
        except QueueFull:
            log.info("request %s policy=%s rejected: queue full", rid, policy.name)
            metrics.rejected.labels(policy.name, "queue_full").inc()
            return _error(429, "server busy: request queue is full, retry later", "rate_limit_error",
                          "queue_full")
        except BatcherClosed:
            metrics.rejected.labels(policy.name, "shutting_down").inc()
            return _error(503, "server shutting down", "server_error", "shutting_down")
        watcher = asyncio.create_task(cancel_when_disconnected(request, cancel, rid, policy.name))
        obj = "chat.completion" if chat else "text_completion"
        head = {"id": rid, "object": obj + (".chunk" if chat and body.stream else ""), "created": int(started),
                "model": body.model or model_name}
        results: dict[int, GenerationResult] = {}
        offsets = [0] * count  # text completions' logprobs: where each choice's next token starts

        def usage() -> dict[str, int]:
            prompt = sum(max((r.prompt_tokens for k, r in results.items() if k // n == p), default=0)
                         for p in range(len(inputs)))  # once per input (0 for a choice cancelled unread)
            completion = sum(r.completion_tokens for r in results.values())
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        def finish_log() -> None:
            u = usage()
            log.info("request %s policy=%s n=%d prompt_tokens=%d completion_tokens=%d finish=%s latency_ms=%d",
                     rid, policy.name, count, u["prompt_tokens"], u["completion_tokens"],
                     ",".join(results[i].finish_reason for i in sorted(results)), 1000 * (time.time() - started))

        def logprobs_of(index: int, entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
            if entries is None:
                return None
            if chat:
                return chat_logprobs(entries)
            out = text_logprobs(entries, offsets[index])
            offsets[index] += sum(len(t) for t in out["tokens"])
            return out

        def choice(index: int, text: str | None, finish: str | None, entries: list[TokenLogprob] | None,
                   role: bool = False) -> dict[str, Any]:
            """One choice: of a whole answer (`text` all of it) or of a chunk (`text` its new part)."""
            row: dict[str, Any] = {"index": index, "finish_reason": finish}
            if chat and body.stream:
                row["delta"] = {"role": "assistant", "content": ""} if role else \
                    {} if text is None else {"content": text}
            elif chat:
                row["message"] = {"role": "assistant", "content": text}
            else:
                row["text"] = text or ""
            if entries or not body.stream:
                row["logprobs"] = logprobs_of(index, entries)
            return row

        if body.stream:
            filters = [StreamRedactor(redactor) for _ in range(count)] if redactor is not None else None

            async def sse() -> Any:
                if chat:
                    for index in range(count):
                        yield _sse({**head, "choices": [choice(index, None, None, None, role=True)]})
                while len(results) < count:
                    index, kind, payload = await events.get()
                    if kind == "event":
                        text = payload.text
                        if filters is not None:  # whole sentences, filtered, as they complete
                            text = await asyncio.to_thread(filters[index].feed, text)
                            if not text:
                                continue
                        yield _sse({**head, "choices": [choice(index, text, None, payload.logprobs)]})
                    elif kind == "error":
                        cancel.set()  # the other choices stop too
                        watcher.cancel()
                        yield _sse({"error": {"message": str(payload), "type": "invalid_request_error"}})
                        break
                    else:
                        results[index] = payload
                        if filters is not None:
                            rest = await asyncio.to_thread(filters[index].close)
                            count_redacted(filters[index].labels)
                            if rest:
                                yield _sse({**head, "choices": [choice(index, rest, None, None)]})
                        yield _sse({**head, "choices": [choice(index, None, payload.finish_reason, None)]})
                        if len(results) == count:
                            watcher.cancel()
                            finish_log()
                            if body.stream_options and body.stream_options.include_usage:
                                yield _sse({**head, "choices": [], "usage": usage()})  # as OpenAI: last, no choices
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")

        while len(results) < count:
            index, kind, payload = await events.get()
            if kind == "error":
                cancel.set()
                watcher.cancel()
                return _error(400, str(payload), "invalid_request_error")
            if kind == "done":
                results[index] = payload
        watcher.cancel()
        finish_log()
        texts = [results[i].text for i in range(count)]
        if redactor is not None:
            for i in range(count):
                texts[i], labels = await asyncio.to_thread(redactor.redact, texts[i])
                count_redacted(labels)
        return {**head, "choices": [choice(i, texts[i], results[i].finish_reason, results[i].logprobs)
                                    for i in range(count)], "usage": usage()}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        policy = policy_of(request)
        if policy is None:
            return _error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")
        if body.top_logprobs is not None and not body.logprobs:
            return _error(400, "top_logprobs needs logprobs: true", "invalid_request_error", "invalid_logprobs")
        top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        ready = settings(policy, body, body.max_completion_tokens or body.max_tokens, top_logprobs)
        if isinstance(ready, JSONResponse):
            return ready
        return await answer(request, policy, body, [{"messages": [m.model_dump() for m in body.messages]}], *ready,
                            top_logprobs, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        policy = policy_of(request)
        if policy is None:
            return _error(401, "invalid or missing API key", "invalid_request_error", "invalid_api_key")
        if body.echo or body.suffix:
            return _error(400, "echo and suffix are not supported", "invalid_request_error", "unsupported")
        ready = settings(policy, body, body.max_tokens, body.logprobs)
        if isinstance(ready, JSONResponse):
            return ready
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        return await answer(request, policy, body, [{"text": p} for p in prompts], *ready, body.logprobs,
                            chat=False)

    return app


def output_redactors(policies: PolicySet) -> dict[str, OutputRedactor]:
    """An output filter per PII profile that some policy's `redact_output` names (its detector loaded once)."""
    from unleak.config import REDACT_TYPE_NAMES, CandidateConfig, PIIConfig
    from unleak.pii.base import detector_for_profile

    profiles = {p.redact_output for p in policies.policies.values() if p.redact_output is not None}
    return {profile: OutputRedactor(detector_for_profile(PIIConfig(profile=profile)),  # type: ignore[arg-type]
                                    CandidateConfig().redact_template, REDACT_TYPE_NAMES)
            for profile in sorted(profiles)}


def _sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"


def build_server_generator(model: str, adapters: dict[str, str], device: str | None = None,
                           dtype: str | None = None, max_batch: int = 16) -> CFGGenerator:
    """The model with every named adapter loaded once (PEFT), switched per request without reloading."""
    from unleak.models import load_model, load_tokenizer, peft_wrapping

    net = load_model(model, device=device, dtype=dtype)
    if adapters:
        from peft import PeftModel

        items = list(adapters.items())
        first_name, first_dir = items[0]
        with peft_wrapping():
            net = PeftModel.from_pretrained(net, first_dir, adapter_name=first_name)
        for name, directory in items[1:]:
            net.load_adapter(directory, adapter_name=name)
        net.eval()
    return CFGGenerator(net, load_tokenizer(model), max_batch_requests=max_batch)
