"""The service's Prometheus metrics, in a registry of their own (one per app).

    deocc_requests_total{route,method,status}   every HTTP request, by route and status
    deocc_request_seconds{route}                 latency histogram
    deocc_faces_per_request                      faces found per de-occlusion request
    deocc_batch_size                             crops per model call
    deocc_batch_requests                         distinct requests per model call (> 1: shared)
    deocc_model_seconds                          time of one model call
    deocc_queue_depth                            de-occlusion requests admitted, not yet answered
    deocc_batch_queue_crops                      crops waiting for the model
    deocc_ready                                  1 once the model is loaded and warmed
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from deocc_jax.serving.batcher import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COUNT_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The service's metrics; `render()` is the /metrics body."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("deocc_requests", "HTTP requests by route, method and status.",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("deocc_request_seconds", "Request latency by route.", ("route",),
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.faces = Histogram("deocc_faces_per_request", "Faces found per de-occlusion request.",
                               buckets=_COUNT_BUCKETS, registry=r)
        self.batch_size = Histogram("deocc_batch_size", "Face crops per model call.",
                                    buckets=_COUNT_BUCKETS[1:], registry=r)
        self.batch_requests = Histogram("deocc_batch_requests",
                                        "Distinct requests whose crops shared a model call.",
                                        buckets=_COUNT_BUCKETS[1:], registry=r)
        self.model_seconds = Histogram("deocc_model_seconds", "Duration of one model call.",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("deocc_queue_depth",
                                 "De-occlusion requests admitted and not yet answered.", registry=r)
        self.batch_queue = Gauge("deocc_batch_queue_crops", "Face crops waiting for the model.",
                                 registry=r)
        self.ready = Gauge("deocc_ready", "1 once the model is loaded and warmed.", registry=r)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.crops)
        self.batch_requests.observe(stats.requests)
        self.model_seconds.observe(stats.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
