"""What the deploy tests share: rendering the chart, building overlays, validating objects.

`render(values)` renders helm/agentrl with real Helm (helm-python-sdk, no helm binary, no
cluster); `validate(obj)` checks one object against the Kubernetes schemas in strict mode
(kubernetes-validate), each distinct object once per session (a schema load costs ~80 ms).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import kustomize_lite
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "agentrl"
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/cpu-dev", "overlays/gpu"]
# Schemas the objects must satisfy: every field used exists in 1.31 (appArmorProfile since 1.30).
KUBE_VERSION = "1.31"
SERVICES = ("sandbox", "reward", "search")

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
}


def render(values: dict[str, Any] | None = None, name: str = "agentrl") -> list[dict[str, Any]]:
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=name, namespace="agentrl")
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def _validate_json(document: str) -> None:
    kubernetes_validate.validate(json.loads(document), KUBE_VERSION, strict=True)


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
    """Container env as a dict; a value from a Secret becomes a placeholder URL."""
    return {e["name"]: e.get("value", "redis://from-secret:6379/0") for e in container["env"]}


SOURCES = [f"helm:{name}" for name in VALUE_SETS] + [f"kustomize:{k}" for k in KUSTOMIZATIONS]


@functools.cache
def _objects_json(source: str) -> str:
    tool, _, name = source.partition(":")
    objects = render(VALUE_SETS[name]) if tool == "helm" else kustomize_lite.build(K8S / name)
    return json.dumps(objects)


def objects_of(source: str) -> list[dict[str, Any]]:
    """The objects of one source in SOURCES (a fresh copy: tests may modify it)."""
    return json.loads(_objects_json(source))
