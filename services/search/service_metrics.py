"""Prometheus metrics of the search service (`agentrl_search_*`), beside the per-call gRPC
metrics that agentrl.common.grpc_server records for every service.

- `queries_total{index,method}`: queries answered (a request may carry many);
- `request_duration_seconds{api,transport}`: Retrieve/Access time, cache and queueing included;
- `cache_lookups_total{result}` (hit|miss) and `cache_hit_ratio` (hits / lookups since start);
- `batch_size_queries`: queries searched together per batch (batching at work under load);
- `in_flight_requests`, `rejected_total{reason}` (overloaded, queue_timeout);
- `index_passages{index}`: passages of each loaded index.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agentrl.common import metrics

SERVICE = "search"
# Batch sizes are counts of queries: powers of two up to the largest batch allowed.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class SearchMetrics:
    """The service's metrics in `registry` (default: the process-wide one)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.queries = metrics.counter(
            SERVICE, "queries", "total", "Queries answered.", ("index", "method"), registry
        )
        self.latency = metrics.histogram(
            SERVICE,
            "request_duration",
            "seconds",
            "Retrieve/Access handling time, queueing included.",
            ("api", "transport"),
            registry,
        )
        self.cache_lookups = metrics.counter(
            SERVICE,
            "cache_lookups",
            "total",
            "Result cache lookups by result (hit, miss).",
            ("result",),
            registry,
        )
        self.cache_hit_ratio = metrics.gauge(
            SERVICE,
            "cache_hit",
            "ratio",
            "Cache hits over lookups since the process started.",
            (),
            registry,
        )
        self.batch_size = metrics.histogram(
            SERVICE,
            "batch_size",
            "queries",
            "Queries searched together in one batch.",
            (),
            registry,
            buckets=BATCH_BUCKETS,
        )
        self.in_flight = metrics.gauge(
            SERVICE,
            "in_flight",
            "requests",
            "Retrieve/Access requests being handled now.",
            (),
            registry,
        )
        self.rejected = metrics.counter(
            SERVICE,
            "rejected",
            "total",
            "Requests refused for load, by reason.",
            ("reason",),
            registry,
        )
        self.passages = metrics.gauge(
            SERVICE, "index", "passages", "Passages in each loaded index.", ("index",), registry
        )
        # Children bound once: `labels()` validates and locks on every call, and a Retrieve
        # touches these for every request (engine.py).
        self.cache_hits = self.cache_lookups.labels("hit")
        self.cache_misses = self.cache_lookups.labels("miss")
        self.queries_of = metrics.children(self.queries)
        self.latency_of = metrics.children(self.latency)
