"""Batching concurrent requests into the CFG generator, behind a bounded queue.

One worker thread owns the model. Requests are queued (`submit` raises
`QueueFull` when `max_queue` are already waiting: the server answers 429,
never an unbounded backlog); the worker takes everything that is waiting (up
to `max_batch`, after a short gathering window) and decodes it as one batch
with `CFGGenerator.stream`, handing each request's events back to its asyncio
queue. Requests that arrive during a batch form the next one.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from unleak.decoding.generator import CFGGenerator, GenerationRequest


class QueueFull(Exception):
    pass


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue


class Batcher:
    def __init__(self, generator: CFGGenerator, max_batch: int = 16, max_queue: int = 64,
                 gather_ms: float = 5.0) -> None:
        self.generator = generator
        self.max_batch = max_batch
        self.gather_s = gather_ms / 1000
        self.jobs: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: list[int] = []
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

    def _decode(self, batch: list[_Job]) -> None:
        def send(job: _Job, item: tuple[str, Any]) -> None:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)

        valid, encoded = [], []
        for job in batch:  # a request the generator refuses fails alone, not its whole batch
            try:
                encoded.append(self.generator.encode(job.request))
                valid.append(job)
            except Exception as exc:
                send(job, ("error", exc))
        batch = valid
        if not batch:
            return
        try:
            for event in self.generator.stream_encoded(encoded):
                job = batch[event.index]
                if event.text:
                    send(job, ("event", event.text))
                if event.result is not None:
                    send(job, ("done", event.result))
        except Exception as exc:  # one bad batch must not kill the worker
            for job in batch:
                send(job, ("error", exc))
