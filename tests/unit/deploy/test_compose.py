"""docker-compose.yml and the Dockerfile, read as data (no Docker engine needed).

The compose file must publish nothing beyond loopback, give every service a healthcheck that
probes that service's own port, bind each AgentRL service to 0.0.0.0 inside its container on
the ports the config defaults give it, and take the auth token only from the caller's
environment. The Dockerfile must build from a base image given as a build argument and run as a
non-root user with bubblewrap installed. Whether the image builds and the containers start is
checked by hand (docs/deploy.md, "What was run"), not here.
"""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_render import REPO

from agentrl.common.config import AgentRLConfig

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
AGENTRL_SERVICES = ("sandbox", "reward", "search")
DOCKERFILE = (REPO / "Dockerfile").read_text()


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


def test_compose_runs_redis_and_the_cpu_services_only():
    assert set(COMPOSE["services"]) == {"redis", *AGENTRL_SERVICES}


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_port_is_published_on_loopback_only(name):
    service = COMPOSE["services"][name]
    assert service.get("network_mode") != "host"
    for host_ip, _, _ in published(service):
        assert host_ip == "127.0.0.1", (name, service["ports"])


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
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


def test_dockerfile_builds_from_a_base_image_argument_in_every_stage():
    first_from = DOCKERFILE.index("\nFROM ")
    assert re.search(r"^ARG BASE_IMAGE=\S+", DOCKERFILE[:first_from], re.MULTILINE)
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert stages and all(stage == "${BASE_IMAGE}" for stage in stages), stages


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
