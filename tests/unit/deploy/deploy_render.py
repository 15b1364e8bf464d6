"""What the deploy tests share: rendering the chart, building overlays, validating objects.

Real tools only: `render(values)` runs `helm template` and `build(path)` runs `kubectl
kustomize` (scripts/kube_tools.sh puts both binaries in .venv/bin; nothing talks to a
cluster); `validate(obj)` checks one object against the Kubernetes schemas of every version in
KUBE_VERSIONS in strict mode (kubernetes-validate), each distinct object once per session.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "agentrl"
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/cpu-dev", "overlays/gpu"]
# Schemas every object must satisfy: 1.33, the first release with pod user namespaces on by
# default (the sandbox's isolation), and 1.37, the newest kubernetes-validate ships.
KUBE_VERSIONS = ("1.33", "1.37")
SERVICES = ("sandbox", "reward", "search", "rollout")


# Value sets the chart must render into valid objects; tests also check what each one changes.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-redis-url": {"redis": {"external": True, "url": "redis://redis.example:6379/0"}},
    "external-redis-secret": {"redis": {"external": True, "existingSecret": "redis-url"}},
    "search-on-gpu": {"services": {"search": {"gpus": 1}}},
    "sandbox-privileged": {"services": {"sandbox": {"securityProfile": "bwrap-privileged"}}},
    "fixed-replicas": {
        "services": {
            "sandbox": {"autoscaling": {"enabled": False}, "replicas": 5},
            "reward": {"replicas": 3},
        }
    },
    "existing-claim": {"sharedVolume": {"existingClaim": "weights"}},
    "native-transport": {"trainer": {"weightTransport": "vllm"}},
    "monitoring": {"monitoring": {"podMonitor": {"enabled": True}}},
    "torchrun-cpu": {"trainer": {"nodes": 2}},
    "vllm-tensor-parallel": {
        "vllm": {"gpus": 2, "gpuMemoryUtilization": 0.85, "extraArgs": ["--enable-prefix-caching"]}
    },
}


def tool(name: str) -> str:
    """The helm or kubectl binary: the venv's (scripts/kube_tools.sh), else PATH's."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: run `bash scripts/kube_tools.sh` (scripts/setup.sh does) "
            "or put the binary on PATH"
        )
    return found


class ToolError(RuntimeError):
    """helm or kubectl refused: the message is its stderr."""


def run_tool(*args: str) -> str:
    result = subprocess.run(
        [tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise ToolError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(
    values: dict[str, Any] | None = None,
    name: str = "agentrl",
    values_files: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`helm template` of the chart with `values` (and the chart's own values files named)."""
    args = ["helm", "template", name, str(CHART), "--namespace", "agentrl"]
    args += ["--kube-version", f"{KUBE_VERSIONS[-1]}.0"]
    for file in values_files:
        args += ["-f", str(CHART / file)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(values or {}, handle)
    try:
        return documents(run_tool(*args, "-f", handle.name))
    finally:
        os.unlink(handle.name)


def build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one kustomization directory."""
    return documents(run_tool("kubectl", "kustomize", str(path)))


@functools.cache
def _validate_json(document: str) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(json.loads(document), version, strict=True)


def validate(obj: dict[str, Any]) -> None:
    _validate_json(json.dumps(obj, sort_keys=True))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = find(objects, kind, name)
    return found


def service_deployments(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """AgentRL service Deployments (those running `agentrl serve <name>`) by service name."""
    found = {}
    for deployment in find(objects, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        if container.get("args", [])[:1] == ["serve"]:
            found[container["args"][1]] = deployment
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """Container env as a dict; a value from a Secret becomes a placeholder URL (the only
    Secret-held value is Redis's URL), one from the pod's fields a placeholder name."""
    env = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[entry["name"]] = "redis://from-secret:6379/0"
        elif "fieldRef" in source:
            env[entry["name"]] = "from-pod-field"
        else:
            env[entry["name"]] = entry["value"]
    return env


# The chart's own values files, alone or stacked as their comments say.
VALUE_FILES: dict[str, tuple[str, ...]] = {
    "small": ("values-small.yaml",),
    "gpu": ("values-gpu.yaml",),
    "large": ("values-gpu.yaml", "values-large.yaml"),
}
# Kinds from CRDs (the Prometheus Operator's): no schema in kubernetes-validate.
CRD_KINDS = {"PodMonitor"}

SOURCES = (
    [f"helm:{name}" for name in VALUE_SETS]
    + [f"helm-file:{name}" for name in VALUE_FILES]
    + [f"kustomize:{k}" for k in KUSTOMIZATIONS]
)


@functools.cache
def _objects_json(source: str) -> str:
    kind, _, name = source.partition(":")
    if kind == "helm":
        objects = render(VALUE_SETS[name])
    elif kind == "helm-file":
        objects = render(values_files=VALUE_FILES[name])
    else:
        objects = build(K8S / name)
    return json.dumps(objects)


def objects_of(source: str) -> list[dict[str, Any]]:
    """The objects of one source in SOURCES (a fresh copy: tests may modify it)."""
    return json.loads(_objects_json(source))
