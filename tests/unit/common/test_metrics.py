"""Prometheus helpers: naming, duplicate-safe registration, the standalone /metrics server."""

from __future__ import annotations

import importlib.util
import sys
import uuid

import httpx
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from agentrl.common import grpc_interceptors, metrics


def test_metric_names_follow_the_convention():
    assert metrics.metric_name("sandbox", "run_duration", "seconds") == (
        "agentrl_sandbox_run_duration_seconds"
    )


@pytest.mark.parametrize(
    ("service", "name", "unit"),
    [
        ("Sandbox", "runs", "total"),
        ("sandbox", "run-time", "seconds"),
        ("sandbox", "runs", ""),
        ("sandbox", "_runs", "total"),
        ("sandbox", "runs__x", "total"),
    ],
)
def test_bad_metric_name_parts_are_rejected(service, name, unit):
    with pytest.raises(ValueError, match="lower snake case"):
        metrics.metric_name(service, name, unit)


def test_counters_always_end_in_total():
    registry = CollectorRegistry()
    metrics.counter("test", "runs", "total", "Runs.", registry=registry).inc()
    metrics.counter("test", "cpu", "seconds", "CPU time.", registry=registry).inc(2)
    assert registry.get_sample_value("agentrl_test_runs_total") == 1.0
    assert registry.get_sample_value("agentrl_test_cpu_seconds_total") == 2.0


def test_asking_twice_returns_the_registered_metric():
    registry = CollectorRegistry()
    first = metrics.counter("test", "runs", "total", "Runs.", ("status",), registry)
    second = metrics.counter("test", "runs", "total", "Runs.", ("status",), registry)
    assert first is second
    second.labels("ok").inc()
    assert registry.get_sample_value("agentrl_test_runs_total", {"status": "ok"}) == 1.0


def test_same_name_with_other_type_or_labels_is_an_error():
    registry = CollectorRegistry()
    metrics.gauge("test", "queue", "depth", "Queue depth.", ("queue",), registry)
    with pytest.raises(ValueError, match="already registered"):
        metrics.gauge("test", "queue", "depth", "Queue depth.", ("stream",), registry)
    with pytest.raises(ValueError, match="already registered"):
        metrics.get_or_create(Counter, "agentrl_test_queue_depth", "x", ("queue",), registry)


def test_a_second_copy_of_a_module_reuses_the_default_registry_entries(monkeypatch):
    # Importing a module twice (different sys.path entries, importlib.reload) re-runs its
    # metric definitions; prometheus_client alone would raise "Duplicated timeseries".
    spec = importlib.util.spec_from_file_location("agentrl_metrics_copy", metrics.__file__)
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, copy)
    spec.loader.exec_module(copy)
    name = f"dup_{uuid.uuid4().hex[:8]}"
    gauge = metrics.gauge("test", name, "items", "Items.")
    assert copy.gauge("test", name, "items", "Items.") is gauge
    assert isinstance(gauge, Gauge)
    prometheus_client.REGISTRY.unregister(gauge)


def test_grpc_interceptor_can_be_built_twice_on_the_default_registry():
    grpc_interceptors.MetricsInterceptor()
    grpc_interceptors.MetricsInterceptor()


def test_standalone_metrics_server_serves_the_registry_on_a_free_loopback_port():
    registry = CollectorRegistry()
    metrics.counter("test", "widgets", "total", "Widgets.", registry=registry).inc(3)
    server = metrics.start_metrics_server(port=0, registry=registry)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        text = httpx.get(server.url).text
        assert "agentrl_test_widgets_total 3.0" in text
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=1)


def test_metrics_response_has_the_prometheus_content_type():
    registry = CollectorRegistry()
    metrics.gauge("test", "ready", "ratio", "Ready.", registry=registry).set(1)
    body, content_type = metrics.metrics_response(registry)
    assert content_type.startswith("text/plain")
    assert b"agentrl_test_ready_ratio 1.0" in body
