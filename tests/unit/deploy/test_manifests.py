"""Kubernetes manifests: the Helm chart (helm/agentrl) and the kustomize base and overlays.

Offline, with the real tools: the chart is linted by `helm lint --strict` and rendered by `helm
template`, overlays are built by `kubectl kustomize`, and every object is validated against the
Kubernetes schemas of KUBE_VERSIONS in strict mode (kubernetes-validate). Beyond
schema validity, the manifests must agree with the services: each one binds 0.0.0.0 through
AGENTRL__<SECTION>__* env on the ports its gRPC probes, container ports, Service and Prometheus
annotations use, and the recipe it mounts resolves with the real `load_config`.
Nothing here talks to a cluster: scheduling, admission and the pods' behaviour are not covered.
"""

from __future__ import annotations

import os
import re

import kubernetes_validate
import pytest
from deploy_render import (
    CHART,
    CRD_KINDS,
    K8S,
    KUBE_VERSIONS,
    REPO,
    SERVICES,
    SOURCES,
    build,
    env_of,
    find,
    objects_of,
    one,
    render,
    run_tool,
    service_deployments,
    validate,
)

from agentrl.common.config import load_config


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_chart_lints_without_warnings(version):
    output = run_tool("helm", "lint", "--strict", str(CHART), "--kube-version", f"{version}.0")
    assert "0 chart(s) failed" in output, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize("source", SOURCES)
def test_every_object_is_valid_kubernetes(source):
    objects = objects_of(source)
    assert objects
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            validate(obj)


def test_validation_is_strict_enough_to_catch_a_misspelt_field():
    deployment = one(render(), "Deployment", "agentrl-sandbox")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@pytest.mark.parametrize("source", SOURCES)
def test_each_service_binds_all_interfaces_on_the_ports_its_probes_and_service_use(source):
    objects = objects_of(source)
    deployments = service_deployments(objects)
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        env = env_of(container)
        prefix = f"AGENTRL__{name.upper()}__"
        assert env[f"{prefix}HOST"] == "0.0.0.0"
        grpc_port, http_port = int(env[f"{prefix}GRPC_PORT"]), int(env[f"{prefix}HTTP_PORT"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "http": http_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, (name, probe)
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(http_port)
        assert annotations["prometheus.io/path"] == "/metrics"
        service = one(objects, "Service", deployment["metadata"]["name"])
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
            (grpc_port, "grpc"),
            (http_port, "http"),
        }


@pytest.mark.parametrize("source", SOURCES)
def test_the_mounted_recipe_resolves_to_what_the_manifests_expect(source, tmp_path):
    objects = objects_of(source)
    services = {
        s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
        for s in find(objects, "Service")
    }
    for name, deployment in service_deployments(objects).items():
        pod = deployment["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "recipe"]
        config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(config_map["data"]["recipe.yaml"])
        env = env_of(pod["containers"][0])
        assert env["AGENTRL_RECIPE"] == "/etc/agentrl/recipe.yaml"
        config = load_config(recipe, env=env)
        section = getattr(config, name)
        grpc_port = int(env[f"AGENTRL__{name.upper()}__GRPC_PORT"])
        assert (section.host, section.grpc_port) == ("0.0.0.0", grpc_port)
        # Every address a client would dial is a Service of this render, on that port.
        for peer in SERVICES:
            host, port = getattr(config, peer).target().rsplit(":", 1)
            assert int(port) in services[host], (peer, host, port)
        redis_host = config.redis.url.split("//")[1].split(":")[0]
        if redis_host.startswith("agentrl"):
            assert 6379 in services[redis_host]


@pytest.mark.parametrize("source", SOURCES)
def test_auth_token_comes_only_from_a_mounted_secret_reference(source):
    objects = objects_of(source)
    assert not find(objects, "Secret"), "no Secret may be rendered: its value would be committed"
    for deployment in service_deployments(objects).values():
        pod = deployment["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        assert "AGENTRL_AUTH_TOKEN" not in env
        (volume,) = [v for v in pod["volumes"] if v["name"] == "auth-token"]
        assert volume["secret"]["secretName"] == "agentrl-auth"
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "auth-token"]
        token_path = f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
        assert env["AGENTRL_AUTH_TOKEN_FILE"] == token_path


def test_no_secret_values_are_committed():
    files = [p for root in (K8S, CHART) for p in root.rglob("*") if p.is_file()]
    files += [REPO / "docker-compose.yml", REPO / "Dockerfile"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"^kind:\s*Secret\b", text, re.MULTILINE), path
        assert "PRIVATE KEY" not in text, path
        # The token is only ever a reference: a file from a Secret, or the caller's environment.
        assert not re.search(r"name:\s*AGENTRL_AUTH_TOKEN\s*$", text, re.MULTILINE), path
        for value in re.findall(r"AGENTRL_AUTH_TOKEN\s*[:=]\s*(\S+)", text):
            assert value in ("${AGENTRL_AUTH_TOKEN:-}", "$(openssl"), (path, value)


@pytest.mark.parametrize("source", SOURCES)
def test_sandbox_hpa_scales_the_sandbox_deployment(source):
    objects = objects_of(source)
    sandbox = service_deployments(objects)["sandbox"]
    hpas = find(objects, "HorizontalPodAutoscaler")
    if source == "helm:fixed-replicas":
        assert not hpas and sandbox["spec"]["replicas"] == 5
        return
    (hpa,) = hpas
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": sandbox["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # The HPA owns the replica count; a fixed one would be reset by every apply.
    assert "replicas" not in sandbox["spec"]
    container = sandbox["spec"]["template"]["spec"]["containers"][0]
    assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a CPU request"


def test_sandbox_pod_gets_what_bubblewrap_needs_and_nothing_more():
    for source in ("helm:defaults", "kustomize:base"):
        pod = service_deployments(objects_of(source))["sandbox"]["spec"]["template"]["spec"]
        context = pod["containers"][0]["securityContext"]
        assert pod["hostUsers"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert context["procMount"] == "Unmasked"
        assert context["seccompProfile"] == {"type": "Unconfined"}
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert "privileged" not in context
    for source in ("helm:defaults", "kustomize:base"):
        for name in ("reward", "search"):
            pod = service_deployments(objects_of(source))[name]["spec"]["template"]["spec"]
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "hostUsers" not in pod
            assert "procMount" not in pod["containers"][0]["securityContext"]


def test_privileged_sandbox_variant_is_the_same_in_helm_and_kustomize(tmp_path):
    # An overlay of the base with the component, as docs/deploy.md tells users to write it.
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(K8S / 'base', tmp_path)}]\n"
        f"components: [{os.path.relpath(K8S / 'components/sandbox-privileged', tmp_path)}]\n"
    )
    patched = build(tmp_path)
    for objects in (patched, objects_of("helm:sandbox-privileged")):
        pod = service_deployments(objects)["sandbox"]["spec"]["template"]["spec"]
        context = pod["containers"][0]["securityContext"]
        assert context["privileged"] is True
        assert pod.get("hostUsers", True) is True
        assert context.get("procMount", "Default") == "Default"
        assert pod["securityContext"]["runAsUser"] == 10001
        validate(one(objects, "Deployment", "agentrl-sandbox"))
