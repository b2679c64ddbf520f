"""Counters for /metrics in Prometheus' text format (no client library needed for a handful of series)."""
from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Requests by endpoint and status, tokens, generation latency, queue depth, running sequences."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status) -> count
        self.prompt_tokens = self.generated_tokens = self.decode_steps = 0
        self.rejected = self.cancelled = 0
        self.queue_depth = self.active_sequences = 0
        self.latency_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum, self.latency_count = 0.0, 0

    def count_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1

    def observe_generation(self, seconds: float, prompt_tokens: int) -> None:
        """A finished generation: its latency from arrival to last token, and its prompt tokens."""
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.latency_sum += seconds
            self.latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.latency_counts[i] += 1

    def render(self) -> str:
        """The exposition text, one HELP/TYPE block per metric."""
        with self.lock:
            lines = ["# HELP lmforge_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE lmforge_requests_total counter"]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'lmforge_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            for name, kind, value, text in [
                ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens of finished generations."),
                ("generated_tokens_total", "counter", self.generated_tokens, "Tokens sampled."),
                ("decode_steps_total", "counter", self.decode_steps,
                 "Batched decoding steps (generated tokens / steps = the mean batch size)."),
                ("rejected_total", "counter", self.rejected, "Requests refused with 503 because the queue was full."),
                ("cancelled_total", "counter", self.cancelled, "Generations stopped because the client went away."),
                ("queue_depth", "gauge", self.queue_depth, "Requests waiting for a batch slot."),
                ("active_sequences", "gauge", self.active_sequences, "Sequences being generated now."),
            ]:
                lines += [f"# HELP lmforge_{name} {text}", f"# TYPE lmforge_{name} {kind}", f"lmforge_{name} {value}"]
            lines += ["# HELP lmforge_request_latency_seconds Time from a generation request's arrival to its last token.",
                      "# TYPE lmforge_request_latency_seconds histogram"]
            for bound, count in zip(LATENCY_BUCKETS, self.latency_counts):
                lines.append(f'lmforge_request_latency_seconds_bucket{{le="{bound}"}} {count}')
            lines += [f'lmforge_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                      f"lmforge_request_latency_seconds_sum {self.latency_sum}",
                      f"lmforge_request_latency_seconds_count {self.latency_count}"]
        return "\n".join(lines) + "\n"


class CountRequests:
    """ASGI middleware: counts every response by endpoint and status for /metrics (streaming-safe)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.count_request(scope["path"] if scope["path"].startswith(("/v1/", "/health", "/metrics"))
                                       else "other", status[0])
