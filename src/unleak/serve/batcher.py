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
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from unleak.decoding.generator import CFGGenerator, EncodedRequest, GenerationRequest, GenerationResult


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue


class Batcher:
    def __init__(self, generator: CFGGenerator, max_batch: int = 16, max_queue: int = 64,
                 gather_ms: float = 5.0, continuous: bool = True) -> None:
        self.generator = generator
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
        self._thread = threading.Thread(target=self._run, name="unleak-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> asyncio.Queue:
        """Queue a request; returns the asyncio queue its ("event"|"error"|"done", payload) items arrive on."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        try:
            self.jobs.put_nowait(_Job(request, loop, events))
        except queue.Full:
            raise QueueFull from None
        return events

    def _run(self) -> None:
        while True:
            batch = [self.jobs.get()]
            deadline = time.monotonic() + self.gather_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            self._decode(batch)

    def _decode(self, jobs: list[_Job]) -> None:
        batch: list[_Job] = []  # the jobs decoding, in the generator's index order
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
                if event.text:
                    _send(job, ("event", event.text))
                if event.result is not None:
                    done.add(event.index)
                    self.finished[event.result.finish_reason] += 1
                    _send(job, ("done", event.result))
        except Exception as exc:  # one bad batch must not kill the worker
            for i, job in enumerate(batch):
                if i not in done:
                    self.finished["error"] += 1
                    _send(job, ("error", exc))

    def _encode(self, jobs: list[_Job], batch: list[_Job]) -> list[EncodedRequest]:
        """Encode `jobs` for the generator, appending those it takes to `batch`: a request the generator
        refuses fails alone (an error to its client), a cancelled one is answered without decoding."""
        encoded = []
        for job in jobs:
            if job.request.cancel is not None and job.request.cancel.is_set():
                self.finished["cancelled"] += 1  # its client left while it waited
                guidance = job.request.guidance
                _send(job, ("done", GenerationResult("", [], "cancelled", guidance.guidance_scale,
                                                     guidance.cfg_space, prompt_tokens=0)))
                continue
            try:
                encoded.append(self.generator.encode(job.request))
                batch.append(job)
            except Exception as exc:
                self.finished["error"] += 1
                _send(job, ("error", exc))
        return encoded


def _send(job: _Job, item: tuple[str, Any]) -> None:
    """Hand an item to the job's asyncio queue, from the worker thread."""
    job.loop.call_soon_threadsafe(job.events.put_nowait, item)
