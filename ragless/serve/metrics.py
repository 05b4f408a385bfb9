"""Prometheus metrics of the server (text format at ``GET /metrics``), on a registry of its own per app.

    ragless_requests_total{method,route,status}     requests answered, by route template (never a raw path)
    ragless_request_seconds{method,route}           latency until the last byte of the response
    ragless_queue_depth / ragless_queue_running     model jobs waiting / running (`queue.WorkQueue`)
    ragless_queue_rejected_total                    submissions refused because the queue was full (429)
    ragless_model_seconds{job}                      time in the worker: "ask", "ingest", "delete", "load"
    ragless_index_generation / ragless_index_documents / ragless_index_segments   what queries see now
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Prometheus text format, version 0.0.4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], queue_running: Callable[[], int],
                 index_state: Callable[[], dict[str, int]]):
        disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ragless_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("ragless_request_seconds", "HTTP request latency until the response is sent",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.model = Histogram("ragless_model_seconds", "time of a job in the model worker", ["job"],
                               buckets=LATENCY_BUCKETS, registry=r)
        Gauge("ragless_queue_depth", "model jobs waiting behind the running one", registry=r).set_function(queue_depth)
        Gauge("ragless_queue_running", "model jobs running", registry=r).set_function(queue_running)
        self.rejected = Counter("ragless_queue_rejected", "model jobs refused because the queue was full",
                                registry=r)
        for name, doc in (("generation", "the committed index generation queries see"),
                          ("documents", "live documents"), ("segments", "live segments")):
            Gauge(f"ragless_index_{name}", doc, registry=r).set_function(lambda n=name: index_state().get(n, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it to its last byte (streamed answers included); the route label is the
    matched route's template (``/v1/documents/{doc_id}``), or "unmatched", so labels stay few."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # the template without converters ("/v1/documents/{doc_id}"), as the OpenAPI document names it
            route = getattr(scope.get("route"), "path_format", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status[0])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - t0)
