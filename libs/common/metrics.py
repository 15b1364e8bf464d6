"""Prometheus helpers shared by every AgentRL service: metric naming, registration, exposition.

Naming: `agentrl_<service>_<name>_<unit>` (`metric_name`), lower snake case, the unit spelled
out (`seconds`, `bytes`, `requests`, `total` for plain counts); counters always end in `_total`.
Plumbing shared by all services uses a component in place of the service
(`agentrl_grpc_server_requests_total`); Prometheus target labels (job, pod) tell services apart.

Registry strategy: metrics go to the process-wide default registry unless a test passes its own
`CollectorRegistry`. `counter`/`gauge`/`histogram` get-or-create: asking twice for the same name
(a module imported twice, or reloaded; two servers built in one test process) returns the
metric registered first instead of raising prometheus_client's "Duplicated timeseries" error.
Asking for the same name with another type or other label names is a bug and raises ValueError.

Exposition: `metrics_response` (bytes + content type, used by the FastAPI app of
`agentrl.common.http`) or `start_metrics_server`, a standalone Prometheus HTTP server for a
process that has no FastAPI app. That server has no authentication (see `agentrl.common.auth`).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "agentrl"
_PART_RE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$|^[a-z]$")

# Request latencies from sub-millisecond health checks up to minute-long tool runs.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

_MetricT = TypeVar("_MetricT", Counter, Gauge, Histogram)
# Serialises get-or-create: two threads creating the same metric must get the same object.
_LOCK = threading.Lock()


def metric_name(service: str, name: str, unit: str) -> str:
    """`agentrl_<service>_<name>_<unit>`; ValueError unless each part is lower snake case."""
    for label, part in (("service", service), ("name", name), ("unit", unit)):
        if not _PART_RE.match(part) or "__" in part:
            raise ValueError(f"metric {label} {part!r} must be lower snake case, e.g. 'run_code'")
    return f"{PREFIX}_{service}_{name}_{unit}"


def get_or_create(
    cls: type[_MetricT],
    name: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    registry: CollectorRegistry | None = None,
    **kwargs: Any,
) -> _MetricT:
    """The metric `name` of type `cls` in `registry` (default: the global one), created once."""
    registry = prometheus_client.REGISTRY if registry is None else registry
    labelnames = tuple(labelnames)
    with _LOCK:
        # A private map, but the only index of what a registry holds; stable since 0.4.
        existing = registry._names_to_collectors.get(name)
        if existing is None:
            return cls(name, documentation, labelnames, registry=registry, **kwargs)
    if type(existing) is not cls or tuple(existing._labelnames) != labelnames:
        raise ValueError(
            f"metric {name} is already registered as {type(existing).__name__} with labels "
            f"{tuple(existing._labelnames)}; asked for {cls.__name__} with {labelnames}"
        )
    return existing


def counter(
    service: str,
    name: str,
    unit: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    registry: CollectorRegistry | None = None,
) -> Counter:
    """Counter `agentrl_<service>_<name>_<unit>`, with `_total` appended unless unit is total."""
    full = metric_name(service, name, unit)
    if not full.endswith("_total"):
        full += "_total"
    return get_or_create(Counter, full, documentation, labelnames, registry)


def gauge(
    service: str,
    name: str,
    unit: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    registry: CollectorRegistry | None = None,
) -> Gauge:
    """Gauge `agentrl_<service>_<name>_<unit>`."""
    return get_or_create(
        Gauge, metric_name(service, name, unit), documentation, labelnames, registry
    )


def histogram(
    service: str,
    name: str,
    unit: str,
    documentation: str,
    labelnames: Sequence[str] = (),
    registry: CollectorRegistry | None = None,
    buckets: Sequence[float] = LATENCY_BUCKETS_S,
) -> Histogram:
    """Histogram `agentrl_<service>_<name>_<unit>` (default buckets: request latencies)."""
    return get_or_create(
        Histogram,
        metric_name(service, name, unit),
        documentation,
        labelnames,
        registry,
        buckets=tuple(buckets),
    )


def children(metric: Counter | Gauge | Histogram) -> Callable[..., Any]:
    """`metric.labels`, remembered per label values: prometheus_client validates the values and
    takes a lock on every `labels()` call (~10 us each), a cost paid per request on hot paths.
    For metrics whose label values are few (methods, codes, task types)."""
    return functools.cache(metric.labels)


def metrics_response(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its content type.

    In a process started with PROMETHEUS_MULTIPROC_DIR (one of several workers behind one
    port, e.g. search.workers), the default registry's answer is every worker's metrics from
    that directory: counters and histograms summed, gauges one series per `pid`.
    """
    if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    registry = prometheus_client.REGISTRY if registry is None else registry
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


@dataclass
class MetricsServer:
    """A running standalone `/metrics` server; `stop()` closes its socket."""

    host: str
    port: int
    _httpd: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int = 0, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve `registry` on http://host:port/metrics in a daemon thread (port 0: a free port).

    For processes without a FastAPI app; services with one expose `/metrics` through
    `agentrl.common.http.create_app`. Binds to loopback unless told otherwise; no auth.
    """
    registry = prometheus_client.REGISTRY if registry is None else registry
    httpd, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host=host, port=httpd.server_port, _httpd=httpd, _thread=thread)
