"""The kustomize base and overlays of deploy/k8s: what each overlay changes, and that the
kustomize_lite builder the other tests rely on agrees with real kustomize (`kubectl kustomize`,
where kubectl is installed).
"""

from __future__ import annotations

import shutil
import subprocess

import kustomize_lite
import pytest
import yaml
from deploy_render import K8S, KUSTOMIZATIONS, env_of, find, objects_of, one, service_deployments

KUBECTL = shutil.which("kubectl")
GPU_WORKLOAD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "agentrl-vllm", "labels": {"agentrl.io/accelerator": "nvidia-gpu"}},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "vllm"}},
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/component": "vllm"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        },
    },
}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomize_lite_builds_what_kubectl_kustomize_builds(kustomization):
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert kustomize_lite.normalized(kustomize_lite.build(K8S / kustomization)) == (
        kustomize_lite.normalized(expected)
    )


def test_base_puts_everything_in_the_agentrl_namespace():
    objects = objects_of("kustomize:base")
    one(objects, "Namespace", "agentrl")
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "agentrl", obj["metadata"]["name"]


def test_cpu_dev_overlay_fits_one_small_node():
    base, dev = objects_of("kustomize:base"), objects_of("kustomize:overlays/cpu-dev")
    claim = one(dev, "PersistentVolumeClaim", "agentrl-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    hpa = one(dev, "HorizontalPodAutoscaler", "agentrl-sandbox")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    for name in ("reward", "search"):
        assert service_deployments(dev)[name]["spec"]["replicas"] == 1
    sandbox = service_deployments(dev)["sandbox"]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(sandbox)
    # The overlay only adds to the base's env: binding and ports stay.
    assert env["AGENTRL__SANDBOX__MAX_CONCURRENCY"] == "2"
    assert env["AGENTRL__SANDBOX__HOST"] == "0.0.0.0"
    base_sandbox = service_deployments(base)["sandbox"]["spec"]["template"]["spec"]
    assert len(sandbox["env"]) == len(base_sandbox["containers"][0]["env"]) + 1
    assert sandbox["securityContext"] == base_sandbox["containers"][0]["securityContext"]
    for deployment in find(dev, "Deployment"):
        requests = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert _cpu(requests["cpu"]) <= 0.5, deployment["metadata"]["name"]


def test_gpu_overlay_schedules_labelled_gpu_workloads_on_gpu_nodes_only():
    base = kustomize_lite.build(K8S / "base")
    overlay = K8S / "overlays" / "gpu"
    # The overlay's own patches applied to the base plus a GPU workload like the vLLM pool.
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    objects = [*base, GPU_WORKLOAD]
    for patch in spec["patches"]:
        objects = kustomize_lite._apply_patch(overlay, patch, objects)
    pod = one(objects, "Deployment", "agentrl-vllm")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for name, deployment in service_deployments(objects).items():
        assert "tolerations" not in deployment["spec"]["template"]["spec"], name
    hpa = one(objects, "HorizontalPodAutoscaler", "agentrl-sandbox")
    assert (
        hpa["spec"]["maxReplicas"]
        > one(base, "HorizontalPodAutoscaler", "agentrl-sandbox")["spec"]["maxReplicas"]
    )


def test_a_patch_without_a_matching_object_is_an_error_not_a_no_op(tmp_path):
    (tmp_path / "patch.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: agentrl-sandbx}\n"
        "spec: {replicas: 1}\n"
    )
    with pytest.raises(ValueError, match="agentrl-sandbx"):
        kustomize_lite._apply_patch(
            tmp_path, {"path": "patch.yaml"}, kustomize_lite.build(K8S / "base")
        )


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
