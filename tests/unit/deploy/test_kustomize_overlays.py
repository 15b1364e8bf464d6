"""The kustomize base and overlays of deploy/k8s, built by `kubectl kustomize`: what each
overlay changes.
"""

from __future__ import annotations

from deploy_render import env_of, find, objects_of, one, service_deployments

GPU_LABEL = "agentrl.io/accelerator"


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
    base, objects = objects_of("kustomize:base"), objects_of("kustomize:overlays/gpu")
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        if workload["metadata"].get("labels", {}).get(GPU_LABEL) == "nvidia-gpu":
            assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                pod["tolerations"]
            )
        else:
            assert "nvidia.com/gpu" not in str(pod.get("tolerations", [])), workload["metadata"]
    hpa = one(objects, "HorizontalPodAutoscaler", "agentrl-sandbox")
    assert (
        hpa["spec"]["maxReplicas"]
        > one(base, "HorizontalPodAutoscaler", "agentrl-sandbox")["spec"]["maxReplicas"]
    )


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
