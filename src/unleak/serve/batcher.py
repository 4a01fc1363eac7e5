"""Batching concurrent requests into the CFG generator, behind a bounded queue.

One worker thread owns the model. Requests are queued (`submit` raises
`QueueFull` when `max_queue` are already waiting: the server answers 429,
never an unbounded backlog); the worker takes everything that is waiting (up
to `max_batch`, after a short gathering window) and decodes it as one batch
with `CFGGenerator.stream_encoded`, handing each request's events back to its
asyncio queue. Requests that arrive while a batch decodes join it between two
decode steps while it has room (`continuous`, the default: continuous
batching, as vLLM and TGI do), so a short request does not wait for a long
one; with `continuous=False` they form the next batch. A request whose
`cancel` event is set (its client went away) is dropped if still waiting and
leaves the batch at the next step if decoding; `finished` counts the requests
by how they ended.

Requests submitted together (`submit_all`: the `n` choices of one API call)
are queued all or none and report on one asyncio queue, tagged with their
index. `close` shuts the worker down: new requests are refused
(`BatcherClosed`), waiting and running ones end "cancelled", and the thread is
joined, so no decoding is left running in a daemon thread when the process
exits. Each request that ends (any way) is reported to `on_finish` as a
`Finished` record (its label, finish, tokens and times), e.g. for metrics.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from unleak.decoding.generator import CFGGenerator, EncodedRequest, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue has no room for the request(s): the server answers 429."""


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new requests: the server answers 503."""


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    #: the request's position in its `submit_all` call (the choice index of an API call with n > 1)
    index: int = 0
    label: str = ""
    #: the first request of its prompt in that call (the others are more choices of the same prompt)
    first_of_prompt: bool = True
    #: `time.monotonic()` when queued, when its decoding began, when its first text came
    submitted: float = 0.0
    started: float | None = None
    first_text: float | None = None


@dataclass(frozen=True)
class Finished:
    """How one request ended (handed to `Batcher.on_finish`, from the worker thread)."""

    #: the `label` it was submitted with (the server: its policy), its index in that submission, and whether
    #: it is the first of its prompt there (a prompt asked for n choices counts its tokens once)
    label: str
    index: int
    first_of_prompt: bool
    #: its finish reason ("stop", "length", "cancelled") or "error"
    finish: str
    prompt_tokens: int
    completion_tokens: int
    #: seconds from its submission to its decoding's start (to its end, if it never decoded), to its first
    #: text (None: none came), to its end
    queued_s: float
    first_text_s: float | None
    latency_s: float


class Batcher:
    def __init__(self, generator: CFGGenerator, max_batch: int = 16, max_queue: int = 64,
                 gather_ms: float = 5.0, continuous: bool = True,
                 on_finish: Callable[[Finished], None] | None = None) -> None:
        self.generator = generator
        self.on_finish = on_finish
        #: requests decoding at once (at most the generator's `max_batch_requests`)
        self.max_batch = min(max_batch, generator.max_batch_requests)
        self.continuous = continuous
        self.gather_s = gather_ms / 1000
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        #: requests each batch started with, and how many joined running batches
        self.batch_sizes: list[int] = []
        self.joined = 0
        #: requests by how they ended: a finish reason ("stop", "length", "cancelled") or "error"
        self.finished: Counter[str] = Counter()
        self._lock = threading.Lock()  # submissions against `close`
        self._closing = False
        self._running: list[_Job] = []  # the jobs of the batch decoding now
        self._thread = threading.Thread(target=self._run, name="unleak-batcher", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        """`close` was called: no new requests."""
        return self._closing

    @property
    def alive(self) -> bool:
        """The worker thread runs."""
        return self._thread.is_alive()

    @property
    def running(self) -> int:
        """Requests decoding now."""
        return len(self._running)

    def submit(self, request: GenerationRequest) -> asyncio.Queue:
        """Queue a request; returns the asyncio queue its (0, "event"|"error"|"done", payload) items arrive on."""
        return self.submit_all([request])

    def submit_all(self, requests: Sequence[GenerationRequest], label: str = "", choices: int = 1
                   ) -> asyncio.Queue:
        """Queue `requests` together, all or none; returns one asyncio queue of (index, kind, payload) items,
        `index` the request's position in `requests` and `kind` "event" (a `StreamEvent`: new text, and the
        tokens' log-probabilities if asked for), "error" (the exception) or "done" (the `GenerationResult`). Raises `QueueFull` when the queue lacks room for all of them, `BatcherClosed`
        once `close` was called. A request without a `cancel` event gets one (`close` needs it). `label`
        comes back in their `Finished` records; `choices`: each run of that many requests shares one prompt."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        now = time.monotonic()
        with self._lock:
            if self._closing:
                raise BatcherClosed
            if self.jobs.maxsize and self.jobs.maxsize - self.jobs.qsize() < len(requests):
                raise QueueFull
            for index, request in enumerate(requests):
                if request.cancel is None:
                    request = replace(request, cancel=threading.Event())
                self.jobs.put_nowait(_Job(request, loop, events, index, label, index % choices == 0,
                                          now))  # only the worker takes: the room stays
        return events

    def close(self, timeout: float = 30.0) -> bool:
        """Shut down: refuse new requests, end the waiting and the decoding ones "cancelled" (a decoding request
        at its next step) and wait up to `timeout` s for the worker thread. Idempotent; True when it ended."""
        with self._lock:
            self._closing = True
            with self.jobs.mutex:
                waiting = list(self.jobs.queue)
            for job in waiting + list(self._running):
                job.request.cancel.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while not self._closing:
            try:
                first = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.gather_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            self._decode(batch)
        while True:  # closed: whatever still waits was cancelled by `close`, and is answered so
            try:
                self._encode([self.jobs.get_nowait()], [])
            except queue.Empty:
                return

    def _decode(self, jobs: list[_Job]) -> None:
        batch: list[_Job] = []  # the jobs decoding, in the generator's index order
        self._running = batch
        encoded = self._encode(jobs, batch)
        if not batch:
            return

        def admit(running: int) -> list[EncodedRequest]:
            """Waiting jobs (as many as the batch has room for) to join the running batch."""
            waiting = []
            while running + len(waiting) < self.max_batch:
                try:
                    waiting.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            joining = self._encode(waiting, batch)
            self.joined += len(joining)
            return joining

        done: set[int] = set()
        try:
            for event in self.generator.stream_encoded(encoded, admit=admit if self.continuous else None):
                job = batch[event.index]
                if event.text or event.logprobs:
                    if job.first_text is None:
                        job.first_text = time.monotonic()
                    _send(job, "event", event)
                if event.result is not None:
                    done.add(event.index)
                    self._end(job, event.result)
        except Exception as exc:  # one bad batch must not kill the worker
            for i, job in enumerate(batch):
                if i not in done:
                    self._end(job, exc)
        finally:
            self._running = []

    def _encode(self, jobs: list[_Job], batch: list[_Job]) -> list[EncodedRequest]:
        """Encode `jobs` for the generator, appending those it takes to `batch`: a request the generator
        refuses fails alone (an error to its client), a cancelled one (its client left while it waited, or the
        batcher is closing) is answered without decoding."""
        encoded = []
        for job in jobs:
            try:
                request = self.generator.encode(job.request)
            except Exception as exc:
                self._end(job, exc)
                continue
            with self._lock:  # a job `close` does not see as running yet sees `_closing`
                cancelled = self._closing or job.request.cancel is not None and job.request.cancel.is_set()
                if not cancelled:
                    job.started = time.monotonic()
                    encoded.append(request)
                    batch.append(job)
            if cancelled:
                guidance = job.request.guidance
                self._end(job, GenerationResult("", [], "cancelled", guidance.guidance_scale, guidance.cfg_space,
                                                prompt_tokens=0))
        return encoded

    def _end(self, job: _Job, outcome: GenerationResult | Exception) -> None:
        """The job ended with `outcome`: count it, report it to `on_finish`, hand it to its client."""
        result = outcome if isinstance(outcome, GenerationResult) else None
        finish = result.finish_reason if result is not None else "error"
        self.finished[finish] += 1
        if self.on_finish is not None:
            now = time.monotonic()
            try:
                self.on_finish(Finished(
                    job.label, job.index, job.first_of_prompt, finish, result.prompt_tokens if result else 0,
                    result.completion_tokens if result else 0, (job.started or now) - job.submitted,
                    None if job.first_text is None else job.first_text - job.submitted, now - job.submitted))
            except Exception:  # a failing observer must not take the worker down
                log.exception("on_finish failed")
        if result is not None:
            _send(job, "done", result)
        else:
            _send(job, "error", outcome)


def _send(job: _Job, kind: str, payload: Any) -> None:
    """Hand an item to the job's asyncio queue, from the worker thread (dropped if its event loop has ended)."""
    try:
        job.loop.call_soon_threadsafe(job.events.put_nowait, (job.index, kind, payload))
    except RuntimeError:  # the loop is closed: nobody is listening any more
        pass
