"""Policies every rendered object must satisfy, for every source (the chart with each value set
and values file, the kustomize base and overlays): resources, probes, non-root, the sandbox's
egress denied, no secret in plain text, every Service selecting a pod, and every address a
container would dial (read through the real `load_config` from its recipe and env, so every
config key and AGENTRL__* variable the manifests set must exist) resolving to a rendered
Service and port.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
from deploy_render import SOURCES, env_of, find, objects_of, one

from agentrl.common.config import AgentRLConfig, load_config

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Containers not running AgentRL code: no recipe to resolve.
NOT_AGENTRL = {"redis"}
# What each container dials (by container name): the addresses of its config that must resolve.
DIALS = {
    "sandbox": set(),
    "search": set(),
    "reward": {"sandbox"},
    "rollout": {"redis", "sandbox", "reward", "search", "vllm"},
    # Evaluation runs episodes in the trainer: the same tools and reward as rollout.
    "trainer": {"redis", "sandbox", "reward", "search", "vllm"},
    # With the vllm transport each server joins the trainer's rank 0.
    "vllm": {"trainer"},
}


def workloads(objects):
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def pods(objects):
    """(workload, pod spec, pod labels) of every workload."""
    return [
        (w, w["spec"]["template"]["spec"], w["spec"]["template"]["metadata"].get("labels", {}))
        for w in workloads(objects)
    ]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def config_of(objects, pod, container, tmp_path) -> AgentRLConfig:
    (volume,) = [v for v in pod["volumes"] if v["name"] == "recipe"]
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(config_map["data"]["recipe.yaml"])
    env = {k: v for k, v in env_of(container).items() if k.startswith("AGENTRL__")}
    return load_config(recipe, env=env)


def resolve(objects, host: str, port: int) -> str | None:
    """Why `host:port` does not reach a rendered pod, or None when it does. `name` is a
    Service; `pod.name` a pod of a StatefulSet or indexed Job behind the headless Service
    `name`."""
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    if "." not in host:
        service = services.get(host)
        if service is None:
            return f"no Service {host}"
        if port not in {p["port"] for p in service["spec"]["ports"]}:
            return f"Service {host} has no port {port}"
        return None
    pod_name, service_name = host.split(".", 1)
    service = services.get(service_name)
    if service is None or service["spec"].get("clusterIP") != "None":
        return f"no headless Service {service_name}"
    for workload, pod, labels in pods(objects):
        name, spec = workload["metadata"]["name"], workload["spec"]
        if workload["kind"] == "StatefulSet" and spec["serviceName"] == service_name:
            count = spec["replicas"]
        elif workload["kind"] == "Job" and pod.get("subdomain") == service_name:
            assert spec["completionMode"] == "Indexed"
            count = spec["completions"]
        else:
            continue
        if not selects(service["spec"]["selector"], labels):
            return f"Service {service_name} does not select {name}'s pods"
        if pod_name not in {f"{name}-{i}" for i in range(count)}:
            return f"{pod_name} is not one of the {count} pods of {name}"
        ports = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
        return None if port in ports else f"{pod_name} does not listen on {port}"
    return f"no StatefulSet or indexed Job behind {service_name}"


@pytest.mark.parametrize("source", SOURCES)
def test_every_container_has_requests_and_a_memory_limit(source):
    for workload, pod, _ in pods(objects_of(source)):
        for container in pod["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), workload["metadata"]
            assert "memory" in resources.get("limits", {}), workload["metadata"]["name"]


@pytest.mark.parametrize("source", SOURCES)
def test_every_long_running_container_has_probes(source):
    for workload, pod, _ in pods(objects_of(source)):
        if workload["kind"] == "Job":
            # The trainer: only rank 0 serves a status port; a hung collective ends in the
            # process group's timeout, and the Job restarts the pod.
            continue
        for container in pod["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, (workload["metadata"]["name"], probe)


@pytest.mark.parametrize("source", SOURCES)
def test_every_pod_runs_as_non_root_with_a_read_only_root(source):
    for workload, pod, _ in pods(objects_of(source)):
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            if not context.get("privileged"):  # the opt-in privileged sandbox variant
                assert context["allowPrivilegeEscalation"] is False, name


@pytest.mark.parametrize("source", SOURCES)
def test_the_sandbox_reaches_nothing(source):
    objects = objects_of(source)
    (sandbox,) = [p for p in pods(objects) if p[2].get("app.kubernetes.io/component") == "sandbox"]
    policies = [
        p
        for p in find(objects, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], sandbox[2])
    ]
    assert policies, "no NetworkPolicy selects the sandbox"
    egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
    assert egress and all(not p["spec"].get("egress") for p in egress)
    # Ingress: the gRPC port from its callers only (and metrics peers on the metrics port).
    (policy,) = policies
    callers = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer
    }
    assert callers == {"rollout", "reward", "trainer"}


@pytest.mark.parametrize("source", SOURCES)
def test_only_redis_clients_reach_redis_and_only_the_loop_reaches_vllm(source):
    objects = objects_of(source)
    expected = {"redis": {"rollout", "trainer"}, "vllm": {"rollout", "trainer"}}
    for component, allowed in expected.items():
        policies = [
            p
            for p in find(objects, "NetworkPolicy")
            if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
            == component
        ]
        if not policies:
            assert component == "redis" and "external-redis" in source
            continue
        (policy,) = policies
        peers = {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policy["spec"]["ingress"]
            for peer in rule["from"]
            if "podSelector" in peer
        }
        assert peers == allowed, (component, peers)
        for rule in policy["spec"]["ingress"]:
            if any("podSelector" not in peer for peer in rule["from"]):
                # The metrics peers: one port, never everything.
                assert rule.get("ports"), (component, rule)


@pytest.mark.parametrize("source", SOURCES)
def test_no_secret_in_plain_text(source):
    objects = objects_of(source)
    assert not find(objects, "Secret")
    for workload, pod, _ in pods(objects):
        for container in pod["containers"]:
            for entry in container.get("env", []):
                name, value = entry["name"], entry.get("value", "")
                if re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", name) and not name.endswith("_FILE"):
                    assert "value" not in entry, (workload["metadata"]["name"], name)
                assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), (name, "credentials in URL")
    for config_map in find(objects, "ConfigMap"):
        for text in config_map.get("data", {}).values():
            assert not re.search(r"redis://[^/@\s]*:[^/@\s]+@", text)
            assert "PRIVATE KEY" not in text


@pytest.mark.parametrize("source", SOURCES)
def test_every_service_selects_a_pod_on_named_ports(source):
    objects = objects_of(source)
    all_pods = pods(objects)
    for service in find(objects, "Service"):
        matching = [p for p in all_pods if selects(service["spec"]["selector"], p[2])]
        assert matching, f"Service {service['metadata']['name']} selects no pod"
        for _, pod, _ in matching:
            names = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names, (service["metadata"]["name"], port)


@pytest.mark.parametrize("source", SOURCES)
def test_every_budget_and_policy_selects_a_pod(source):
    objects = objects_of(source)
    labels = [p[2] for p in pods(objects)]
    for budget in find(objects, "PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selects(selector, lab) for lab in labels), budget["metadata"]["name"]
    for policy in find(objects, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selects(selector, lab) for lab in labels), policy["metadata"]["name"]


@pytest.mark.parametrize("source", SOURCES)
def test_every_address_a_container_dials_is_a_rendered_service_and_port(source, tmp_path):
    objects = objects_of(source)
    checked = 0
    for workload, pod, _ in pods(objects):
        for container in pod["containers"]:
            if container["name"] in NOT_AGENTRL:
                continue
            # Unknown recipe keys or AGENTRL__* variables fail here (extra keys are refused).
            config = config_of(objects, pod, container, tmp_path)
            dials = DIALS[container["name"]]
            targets = []
            if "redis" in dials and "from-secret" not in config.redis.url:
                targets.append(config.redis.url)
            for name in dials & {"sandbox", "reward", "search"}:
                targets.append("grpc://" + getattr(config, name).target())
            if "vllm" in dials:
                targets += config.inference.urls
            if "trainer" in dials and config.trainer.weight_transport == "vllm":
                targets.append(f"tcp://{config.trainer.weight_transfer_address}:1")
            for target in targets:
                url = urlparse(target)
                if url.hostname == "redis.example":  # the external Redis of a value set
                    continue
                if url.scheme == "tcp":  # the transfer's rendezvous: a free port on rank 0
                    problem = resolve(objects, url.hostname, _any_port(objects, url.hostname))
                else:
                    problem = resolve(objects, url.hostname, url.port)
                assert problem is None, (workload["metadata"]["name"], target, problem)
                checked += 1
    assert checked


def _any_port(objects, host):
    service = one(objects, "Service", host.split(".", 1)[1])
    return service["spec"]["ports"][0]["port"]
