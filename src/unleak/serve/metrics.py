"""The server's Prometheus metrics (`GET /metrics`), with `prometheus_client`.

Per policy: requests by how they ended (`unleak_requests_total{policy,
finish}`: one per choice; `finish` is stop, length, cancelled or error),
calls refused before queueing (`unleak_rejected_requests_total{policy,
reason}`: queue_full, shutting_down), prompt and completion tokens, and the
latency, queueing time and time to first token as histograms, and the PII
spans the output filter replaced (`unleak_redacted_spans_total{policy, type}`). Gauges: requests
waiting and decoding now. Each app has a registry of its own (several apps
in one process, as in the tests, do not collide). No prompt or completion
text, and no API key, is ever a label.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from unleak.serve.batcher import Batcher, Finished

#: seconds: from a tenth of a second (a short answer on a GPU) to minutes (a long one on 2 CPU cores)
TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """Counters and histograms fed by the batcher's `on_finish` (from its worker thread; prometheus_client is
    thread-safe) and by the app (refusals); `watch(batcher)` adds the queue and batch gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("unleak_requests", "Requests (one per choice) by policy and how they ended",
                                ["policy", "finish"], registry=reg)
        self.rejected = Counter("unleak_rejected_requests", "API calls refused before queueing",
                                ["policy", "reason"], registry=reg)
        self.prompt_tokens = Counter("unleak_prompt_tokens", "Prompt tokens (once per prompt of an API call)", ["policy"],
                                     registry=reg)
        self.completion_tokens = Counter("unleak_completion_tokens", "Completion tokens of every choice",
                                         ["policy"], registry=reg)
        self.latency = Histogram("unleak_request_latency_seconds", "From queueing to the request's end",
                                 ["policy"], buckets=TIME_BUCKETS, registry=reg)
        self.queued = Histogram("unleak_queue_seconds", "From queueing to the start of decoding", ["policy"],
                                buckets=TIME_BUCKETS, registry=reg)
        self.first_token = Histogram("unleak_time_to_first_token_seconds", "From queueing to the first text",
                                     ["policy"], buckets=TIME_BUCKETS, registry=reg)
        self.redacted = Counter("unleak_redacted_spans", "PII spans the output filter replaced (policies with "
                                 "redact_output), by policy and PII type", ["policy", "type"], registry=reg)

    def watch(self, batcher: Batcher) -> None:
        Gauge("unleak_queued_requests", "Requests waiting to decode", registry=self.registry).set_function(
            batcher.jobs.qsize)
        Gauge("unleak_running_requests", "Requests decoding now", registry=self.registry).set_function(
            lambda: batcher.running)

    def observe(self, done: Finished) -> None:
        """One request ended (the batcher's `on_finish`)."""
        policy = done.label
        self.requests.labels(policy, done.finish).inc()
        if done.first_of_prompt:
            self.prompt_tokens.labels(policy).inc(done.prompt_tokens)
        self.completion_tokens.labels(policy).inc(done.completion_tokens)
        self.latency.labels(policy).observe(done.latency_s)
        self.queued.labels(policy).observe(done.queued_s)
        if done.first_text_s is not None:
            self.first_token.labels(policy).observe(done.first_text_s)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
