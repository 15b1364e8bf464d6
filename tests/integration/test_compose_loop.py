"""The whole loop in Compose with the images built here: a reduced run (3 steps) through the
containers, weights reaching the vLLM container, the trainer's, rollout's and vLLM's metrics
scraped by the Prometheus container, and a `docker kill` of the rollout container mid-run that
loses and doubles no group.

OPT-IN, not part of CI: building the three images takes longer than CI allows on a 2-core
machine (docs/deploy.md, "What was run" has the measurement), and the sandbox needs Compose v2
(`systempaths=unconfined`; Debian's docker-compose 1.29 cannot pass it). Run it with

    make images && AGENTRL_COMPOSE_E2E=1 .venv/bin/python -m pytest -q tests/integration/test_compose_loop.py

on a machine with `docker compose` (v2), the images `agentrl:dev`, `agentrl-loop:dev`,
`agentrl-vllm:dev`, and the registry images (or AGENTRL_REDIS_IMAGE, AGENTRL_PROMETHEUS_IMAGE,
AGENTRL_GRAFANA_IMAGE naming local ones), with 127.0.0.1:8000, 8081-8085, 9090, 3000, 6380 and
50051-50055 free. It uses its own compose project and removes it, volumes included.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from agentrl.trainer.intake import read_group_history, trained_keys

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
BATCH = 8  # trainer.batch_size of deploy/compose/recipe.yaml
PROMETHEUS = "http://127.0.0.1:9090"
RUN_DIR = "/var/lib/agentrl/runs/compose"
IMAGES = ("agentrl:dev", "agentrl-loop:dev", "agentrl-vllm:dev")

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        os.environ.get("AGENTRL_COMPOSE_E2E") != "1",
        reason="opt-in (AGENTRL_COMPOSE_E2E=1): needs the images of `make images` and Compose v2",
    ),
]


def run(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory):
    if run("docker", "compose", "version", check=False).returncode != 0:
        pytest.skip("Compose v2 (`docker compose`) is not installed")
    for image in IMAGES:
        if run("docker", "image", "inspect", image, check=False).returncode != 0:
            pytest.skip(f"image {image} is missing: run `make images`")
    override = tmp_path_factory.mktemp("compose") / "reduced.yml"
    override.write_text(
        "services:\n  trainer:\n    environment:\n"
        f"      AGENTRL__TRAINER__TOTAL_STEPS: '{STEPS}'\n"
        "      AGENTRL__TRAINER__CHECKPOINT_INTERVAL_STEPS: '1'\n"
    )
    project = f"agentrl-e2e-{os.getpid()}"
    base = [
        "docker",
        "compose",
        "-p",
        project,
        "-f",
        str(REPO / "docker-compose.yml"),
        "-f",
        str(override),
    ]
    try:
        run(*base, "up", "-d", "--no-build", timeout=1800)
        yield base
    finally:
        logs = run(*base, "logs", "--no-color", "--tail", "200", check=False).stdout
        print(logs[-20000:])
        run(*base, "down", "-v", "--remove-orphans", check=False, timeout=600)


def prometheus_value(query: str) -> float | None:
    try:
        reply = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": query}, timeout=10)
        result = reply.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return max(float(r["value"][1]) for r in result) if result else None


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def container_state(base: list[str], service: str) -> dict:
    container_id = run(*base, "ps", "-a", "-q", service).stdout.strip()
    return json.loads(run("docker", "inspect", container_id).stdout)[0]["State"]


def test_a_reduced_run_survives_a_killed_rollout_container(compose, tmp_path):
    # The first step: the trainer's gauge, scraped by the Prometheus container.
    wait_for(
        lambda: (prometheus_value("agentrl_trainer_step_index") or 0) >= 1,
        2400,
        "the trainer's first step in Prometheus",
    )
    # Mid-run: kill the rollout container (SIGKILL, no drain), then start it again.
    run("docker", "kill", run(*compose, "ps", "-q", "rollout").stdout.strip())
    run(*compose, "start", "rollout")

    state = wait_for(
        lambda: (s := container_state(compose, "trainer"))["Status"] == "exited" and s,
        2400,
        "the trainer to finish",
    )
    assert state["ExitCode"] == 0

    # Weights reached the vLLM container: it serves the last policy version.
    info = httpx.get("http://127.0.0.1:8000/weight_info", timeout=10).json()
    assert int(str(info["weight_version"])) >= STEPS - 1, info
    # vLLM's and the rollout worker's own metrics were scraped too.
    assert (prometheus_value("vllm:generation_tokens_total") or 0) > 0
    assert prometheus_value('up{job="agentrl",instance="rollout:8084"}') == 1

    # No group lost or trained twice: every step trained a full batch of distinct groups.
    groups = run(
        *compose,
        "run",
        "--rm",
        "--no-deps",
        "--entrypoint",
        "cat",
        "rollout",
        f"{RUN_DIR}/groups.jsonl",
    ).stdout
    (tmp_path / "groups.jsonl").write_text(groups)
    history = read_group_history(tmp_path)
    assert len(history) == STEPS
    keys = trained_keys(history)
    assert len(keys) == len(set(keys)), "a group was trained twice"
    for record in history:
        assert len(record["groups"]) >= BATCH, record["step"]
