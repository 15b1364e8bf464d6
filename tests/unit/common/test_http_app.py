"""The service FastAPI app: liveness, readiness from a callable, metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from agentrl.common import http, metrics


def test_healthz_answers_while_not_ready():
    client = TestClient(http.create_app("search", ready=lambda: False, token=None))
    assert client.get("/healthz").json() == {"status": "ok", "service": "search"}
    assert client.get("/readyz").status_code == 503


def test_readyz_follows_the_readiness_callable():
    state = {"ready": False}
    client = TestClient(http.create_app("search", ready=lambda: state["ready"], token=None))
    assert client.get("/readyz").status_code == 503
    state["ready"] = True
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_when_the_check_raises():
    def broken() -> bool:
        raise ConnectionError("redis down")

    response = TestClient(http.create_app("search", ready=broken, token=None)).get("/readyz")
    assert response.status_code == 503
    assert "redis down" in response.json()["reason"]


def test_metrics_endpoint_exposes_the_given_registry():
    registry = CollectorRegistry()
    metrics.counter("search", "queries", "total", "Queries.", registry=registry).inc(5)
    client = TestClient(http.create_app("search", token=None, registry=registry))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "agentrl_search_queries_total 5.0" in response.text
