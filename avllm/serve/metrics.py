"""The server's figures in the Prometheus text format (GET /metrics), kept with prometheus_client.

Each ChatService has its own registry, so two servers in one process (tests) count apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .session import Slots

SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class Metrics:
    def __init__(self, slots: Slots):
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "avllm_requests", "HTTP requests answered, by route group and status", ["route", "status"], registry=reg
        )
        self.first_token = Histogram(
            "avllm_time_to_first_token_seconds", "API answers: request start to first answer text", buckets=SECONDS,
            registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "avllm_request_latency_seconds", "API answers: request start to the last token", buckets=SECONDS,
            registry=reg,
        )  # fmt: skip
        self.tokens = Counter("avllm_generated_tokens", "tokens generated (UI and API)", registry=reg)
        self.clips = Counter("avllm_clips", "clips asked about: encoded now or reused", ["result"], registry=reg)
        Gauge("avllm_queue_length", "requests waiting for a slot", registry=reg).set_function(lambda: slots.queued)
        Gauge("avllm_running", "answers and encodings holding a slot", registry=reg).set_function(lambda: slots.active)

    def text(self) -> bytes:
        return generate_latest(self.registry)
