"""The Grafana dashboards query only metrics that the services really define.

Metric names are read from the code the way `agentrl.common.metrics` builds them:
`metrics.counter|gauge|histogram(service, name, unit, ...)` gives
`agentrl_<service>_<name>_<unit>` (counters end in `_total`), where `service` is a string or
the module's `SERVICE` constant. A dashboard query may add the `_bucket`, `_sum` or `_count`
series of a histogram.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from deploy_render import REPO

DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
METRIC_CALL = re.compile(
    r"metrics\.(counter|gauge|histogram)\(\s*(SERVICE|\"[a-z_]+\")\s*,\s*\"([a-z_]+)\"\s*,"
    r"\s*\"([a-z_]+)\""
)


def defined_metrics() -> dict[str, str]:
    """Every metric name the code defines, with its type."""
    found = {}
    for path in [*REPO.glob("libs/common/*.py"), *REPO.glob("services/*/*.py")]:
        text = path.read_text()
        constant = re.search(r'^SERVICE = "([a-z_]+)"', text, re.MULTILINE)
        for kind, service, name, unit in METRIC_CALL.findall(text):
            service = constant.group(1) if service == "SERVICE" and constant else service.strip('"')
            full = f"agentrl_{service}_{name}_{unit}"
            if kind == "counter" and not full.endswith("_total"):
                full += "_total"
            found[full] = kind
    return found


def test_the_code_defines_the_metrics_this_test_reads():
    # Guards the regular expression: if metric definitions change shape, this fails first.
    metrics = defined_metrics()
    assert metrics["agentrl_grpc_server_requests_total"] == "counter"
    assert metrics["agentrl_sandbox_queue_depth_requests"] == "gauge"


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_only_defined_metrics(dashboard: Path):
    metrics = defined_metrics()
    spec = json.loads(dashboard.read_text())
    exprs = [t["expr"] for panel in spec["panels"] for t in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\bagentrl_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in metrics or metrics.get(base) == "histogram", (dashboard.name, name)


def vllm_metric_names() -> set[str]:
    """Metric names vLLM's own code defines (`"vllm:..."` in vllm/v1/metrics), without the
    `_total` prometheus_client adds to counters. The exact exported names are checked against
    a running server in tests/integration/test_dashboard_metrics.py."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    root = Path(spec.origin).parent / "v1" / "metrics"
    return {
        name
        for path in root.rglob("*.py")
        for name in re.findall(r'"(vllm:[a-z_]+)"', path.read_text())
    }


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_only_metrics_vllm_defines(dashboard: Path):
    spec = json.loads(dashboard.read_text())
    exprs = [t["expr"] for panel in spec["panels"] for t in panel.get("targets", [])]
    names = {name for expr in exprs for name in re.findall(r"\bvllm:[a-z_]+", expr)}
    if not names:
        return
    defined = vllm_metric_names()
    for name in names:
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert base in defined, (dashboard.name, name)


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_have_unique_ids_and_a_datasource_variable(dashboard: Path):
    spec = json.loads(dashboard.read_text())
    ids = [panel["id"] for panel in spec["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in spec["templating"]["list"]] == ["datasource"]
    for panel in spec["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
