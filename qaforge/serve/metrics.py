"""Prometheus metrics, in a registry per app (several apps in one test process must not collide)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

# Buckets from 1 ms to 2 min: CPU tests live at the top, an H200 at the bottom.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                    30, 60, 120)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qaforge_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.sequences = Counter("qaforge_sequences", "Sequences generated, by finish reason",
                                 ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("qaforge_prompt_tokens", "Prompt tokens sent to the engine",
                                     registry=r)
        self.generation_tokens = Counter("qaforge_generation_tokens", "Tokens generated",
                                         registry=r)
        self.rejected = Counter("qaforge_rejected_sequences",
                                "Sequences refused because the queue was full", registry=r)
        self.in_flight = Gauge("qaforge_requests_in_flight", "HTTP requests being served",
                               registry=r)
        self.queue_depth = Gauge("qaforge_queue_depth",
                                 "Sequences admitted that have not produced a token yet", registry=r)
        self.running = Gauge("qaforge_sequences_running", "Sequences producing tokens", registry=r)
        self.ready = Gauge("qaforge_ready", "1 once the model is loaded and warmed up", registry=r)
        self.load_seconds = Gauge("qaforge_model_load_seconds", "Engine load time", registry=r)
        self.warmup_seconds = Gauge("qaforge_warmup_seconds", "Warm-up time", registry=r)
        self.ttft = Histogram("qaforge_time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("qaforge_time_per_output_token_seconds",
                              "Mean time per output token after the first, per sequence",
                              buckets=_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("qaforge_e2e_sequence_latency_seconds",
                             "Submission to last token, per sequence", buckets=_LATENCY_BUCKETS,
                             registry=r)

    def add_engine_gauges(self, stats: Callable[[], dict]) -> None:
        """Expose numeric engine stats (e.g. the native engine's waiting/running/KV usage)."""
        def reader(key: str) -> Callable[[], float]:
            return lambda: float(stats().get(key, 0) or 0)

        for key, value in stats().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name = "qaforge_engine_" + "".join(c if c.isalnum() else "_" for c in key)
                Gauge(name, f"engine stat {key}", registry=self.registry).set_function(reader(key))

    def render(self) -> bytes:
        return generate_latest(self.registry)
