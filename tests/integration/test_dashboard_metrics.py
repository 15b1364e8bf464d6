"""The Grafana dashboard's vLLM panels query metrics a running `vllm serve` exports.

One real server (the launcher `agentrl up` and the chart's pool use) on CPU with a tiny model
answers one completion, then every `vllm:` series a dashboard query names must be in its
/metrics exposition, under the exact name (counters with `_total`, histograms with
`_bucket`). The AgentRL metrics of the dashboards are checked against the code that defines
them (tests/unit/deploy/test_grafana.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from agentrl.common.inference.launcher import SERVED_MODEL_NAME
from agentrl.common.models import default_corpus, init_tiny_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(200), seed=1)


def dashboard_vllm_series() -> set[str]:
    names = set()
    for path in DASHBOARDS:
        spec = json.loads(path.read_text())
        for panel in spec["panels"]:
            for target in panel.get("targets", []):
                names.update(re.findall(r"\bvllm:[a-z_]+", target["expr"]))
    return names


def test_every_vllm_series_of_the_dashboards_is_exported_by_a_running_server(server):
    wanted = dashboard_vllm_series()
    assert wanted, "the dashboards have vLLM panels"
    reply = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": SERVED_MODEL_NAME, "prompt": "the", "max_tokens": 4},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    exposition = httpx.get(f"{server.url}/metrics", timeout=30).text
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line.startswith("vllm:")
    }
    missing = sorted(wanted - exported)
    assert not missing, f"queried by a dashboard, not exported by vLLM: {missing}"
