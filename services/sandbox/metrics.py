"""Prometheus metrics of the sandbox service (names `agentrl_sandbox_*`).

Executions by status and backend, execution and request latency, queue depth, in-flight
executions, pool size (ready slots or warm containers), recycles by reason, sessions, and
refusals by reason (invalid request, overload, drain). The gRPC plumbing adds per-method call
metrics on its own (`agentrl_grpc_server_*`).

What this module does NOT cover: per-tenant or per-request-id series (unbounded cardinality).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentrl.common import metrics

SERVICE = "sandbox"


@dataclass
class SandboxMetrics:
    executions: Counter
    execution_duration: Histogram
    request_duration: Histogram
    queue_depth: Gauge
    in_flight: Gauge
    pool_size: Gauge
    recycles: Counter
    sessions: Gauge
    refusals: Counter
    session_evictions: Counter
    session_memory_reserved: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> SandboxMetrics:
        return cls(
            executions=metrics.counter(
                SERVICE,
                "executions",
                "total",
                "Executions by final status and backend.",
                ("status", "backend"),
                registry,
            ),
            execution_duration=metrics.histogram(
                SERVICE,
                "execution_duration",
                "seconds",
                "Wall time of the program itself (sandbox start excluded when warm).",
                ("backend",),
                registry,
            ),
            request_duration=metrics.histogram(
                SERVICE,
                "request_duration",
                "seconds",
                "Time from request arrival to answer, queueing included.",
                ("backend",),
                registry,
            ),
            queue_depth=metrics.gauge(
                SERVICE,
                "queue_depth",
                "requests",
                "Requests waiting for a free slot.",
                (),
                registry,
            ),
            in_flight=metrics.gauge(
                SERVICE, "in_flight", "requests", "Executions running now.", (), registry
            ),
            pool_size=metrics.gauge(
                SERVICE,
                "pool_size",
                "sandboxes",
                "Ready execution environments (bwrap slots, warm containers).",
                ("backend",),
                registry,
            ),
            recycles=metrics.counter(
                SERVICE,
                "recycles",
                "total",
                "Execution environments recycled, by reason.",
                ("backend", "reason"),
                registry,
            ),
            sessions=metrics.gauge(
                SERVICE, "sessions", "sessions", "Open interpreter sessions.", (), registry
            ),
            refusals=metrics.counter(
                SERVICE,
                "refusals",
                "total",
                "Requests refused before running: invalid, overloaded or draining.",
                ("reason",),
                registry,
            ),
            session_evictions=metrics.counter(
                SERVICE,
                "session_evictions",
                "total",
                "Sessions closed by the service: idle past session_idle_s, or evicted while "
                "idle for max_sessions or the sessions' memory budget.",
                ("reason",),
                registry,
            ),
            session_memory_reserved=metrics.gauge(
                SERVICE,
                "session_memory_reserved",
                "bytes",
                "Memory limits of the live sessions together (bounded by "
                "session_memory_budget_mb).",
                (),
                registry,
            ),
        )

    def watch(
        self,
        backend: str,
        queue_depth: Callable[[], float],
        in_flight: Callable[[], float],
        pool_size: Callable[[], float],
        sessions: Callable[[], float],
    ) -> None:
        """Read the gauges from live objects at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)
        self.pool_size.labels(backend=backend).set_function(pool_size)
        self.sessions.set_function(sessions)
