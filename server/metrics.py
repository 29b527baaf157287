"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart).

    vlm_edge_time_to_first_token_seconds      histogram, request start -> first text piece
    vlm_edge_time_per_output_token_seconds    histogram, (end - first piece) / (tokens - 1)
    vlm_edge_e2e_request_latency_seconds      histogram, request start -> last token
    vlm_edge_queue_depth                      gauge, requests admitted (running + waiting)
    vlm_edge_requests_total{status}           counter: ok, rejected (429), invalid, timeout,
                                              disconnect, cancelled, error
    vlm_edge_prompt_tokens_total, vlm_edge_generation_tokens_total   counters
    vlm_edge_process_resident_memory_bytes    gauge (the device gauge on CPU machines)
    vlm_edge_image_memory_limit_bytes, vlm_edge_image_memory_used_bytes   gauges: the decode budget
"""

from __future__ import annotations

import resource
import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)


def _rss_bytes() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0.0


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], int], budget=None):
        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("vlm_edge_time_to_first_token_seconds", "request start to the first text piece",
                              buckets=_LATENCY, registry=r)
        self.tpot = Histogram("vlm_edge_time_per_output_token_seconds", "decode time per output token",
                              buckets=_PER_TOKEN, registry=r)
        self.e2e = Histogram("vlm_edge_e2e_request_latency_seconds", "request start to the last token",
                             buckets=_LATENCY, registry=r)
        self.requests = Counter("vlm_edge_requests", "requests by outcome", ["status"], registry=r)
        self.prompt_tokens = Counter("vlm_edge_prompt_tokens", "prompt tokens (image tokens included)", registry=r)
        self.generation_tokens = Counter("vlm_edge_generation_tokens", "generated tokens", registry=r)
        Gauge("vlm_edge_queue_depth", "requests admitted (running + waiting)", registry=r).set_function(
            lambda: float(queue_depth()))
        Gauge("vlm_edge_process_resident_memory_bytes", "resident memory of the server", registry=r).set_function(
            _rss_bytes)
        if budget is not None:
            Gauge("vlm_edge_image_memory_limit_bytes", "memory for images being decoded (--max-memory)",
                  registry=r).set(budget.limit)
            Gauge("vlm_edge_image_memory_used_bytes", "memory reserved by images being decoded now",
                  registry=r).set_function(lambda: float(budget.used))

    def request(self, status: str) -> None:
        self.requests.labels(status=status).inc()

    def finished(self, result, start: float, first: float | None) -> None:
        end = time.perf_counter()
        self.request("ok")
        self.e2e.observe(end - start)
        if first is not None:
            self.ttft.observe(first - start)
        n = len(result.token_ids)
        if first is not None and n > 1:
            self.tpot.observe((end - first) / (n - 1))
        self.prompt_tokens.inc(result.prompt_tokens)
        self.generation_tokens.inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
