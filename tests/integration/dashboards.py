"""The Grafana dashboards the deployments provision (deploy/grafana/*.json), as the tests that
check them against running services read them: test_dashboard_metrics (a local stack) and
test_compose_loop (the Compose stack's Prometheus)."""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "grafana").glob("*.json"))


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) of every target of every dashboard."""
    return [
        (panel["title"], target["expr"])
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel.get("targets", [])
    ]
