"""The training loop on Kubernetes: vLLM pool, rollout workers, trainer (helm/agentrl templates
vllm/rollout/trainer; deploy/k8s/base/loop.yaml, generated from them). What each object must
say for the services to work together: per-replica vLLM URLs, torchrun's command line, the
weight transport's volume or network rules, drain times, GPUs, persistence, monitoring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from deploy_render import CHART, K8S, REPO, build, env_of, find, objects_of, one, render
from test_policies import config_of, resolve

from agentrl.common.inference.launcher import VLLM_SERVER_MODULE


def workload(objects, kind, suffix):
    (found,) = [o for o in find(objects, kind) if o["metadata"]["name"].endswith(suffix)]
    return found


def container_of(obj):
    (container,) = obj["spec"]["template"]["spec"]["containers"]
    return container


def configs(objects, tmp_path):
    """The resolved config of the vLLM, rollout and trainer containers."""
    out = {}
    for kind, suffix in (("StatefulSet", "-vllm"), ("Deployment", "-rollout"), ("Job", "-trainer")):
        obj = workload(objects, kind, suffix)
        pod = obj["spec"]["template"]["spec"]
        out[suffix[1:]] = config_of(objects, pod, container_of(obj), tmp_path)
    return out


LOOP_SOURCES = [
    "helm:defaults",
    "helm:native-transport",
    "helm:torchrun-cpu",
    "helm-file:small",
    "helm-file:gpu",
    "helm-file:large",
    "kustomize:base",
    "kustomize:overlays/cpu-dev",
    "kustomize:overlays/gpu",
]


@pytest.mark.parametrize("source", LOOP_SOURCES)
def test_vllm_pool_is_a_statefulset_whose_every_replica_is_in_the_clients_url_list(
    source, tmp_path
):
    objects = objects_of(source)
    pool = workload(objects, "StatefulSet", "-vllm")
    service = one(objects, "Service", pool["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    resolved = configs(objects, tmp_path)
    expected = [
        f"http://{pool['metadata']['name']}-{i}.{service['metadata']['name']}:"
        f"{service['spec']['ports'][0]['port']}"
        for i in range(pool["spec"]["replicas"])
    ]
    assert resolved["rollout"].inference.urls == expected
    assert resolved["trainer"].inference.urls == expected
    # The server is the launcher `agentrl up` uses, bound to every interface on its port.
    container = container_of(pool)
    assert container["command"] == [
        "tini",
        "--",
        "python",
        "-m",
        "agentrl.common.inference.launcher",
    ]
    assert VLLM_SERVER_MODULE.startswith("vllm.")
    server_url = resolved["vllm"].inference.urls[0]
    assert server_url == f"http://0.0.0.0:{container['ports'][0]['containerPort']}"
    # It serves the checkpoint on the shared volume, which it mounts.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(resolved["vllm"].served_model_path()).startswith(mounts["shared"] + "/")
    assert (
        container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
        >= 600
    ), "loading a model takes minutes"


def test_a_url_to_a_replica_that_does_not_exist_is_caught():
    objects = objects_of("helm:defaults")
    assert resolve(objects, "agentrl-vllm-1.agentrl-vllm", 8000) is None
    assert "not one of the 2 pods" in resolve(objects, "agentrl-vllm-2.agentrl-vllm", 8000)
    assert "no Service" in resolve(objects, "agentrl-vlm", 8000)
    assert "does not listen" in resolve(objects, "agentrl-trainer-0.agentrl-trainer", 1)


@pytest.mark.parametrize("source", LOOP_SOURCES)
def test_trainer_is_an_indexed_job_that_resumes_and_meets_at_pod_zero(source, tmp_path):
    objects = objects_of(source)
    job = workload(objects, "Job", "-trainer")
    pod = job["spec"]["template"]["spec"]
    container = container_of(job)
    config = configs(objects, tmp_path)["trainer"]
    nodes = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == nodes
    # A disruption's SIGTERM (the trainer exits 143) must not use up the Job's retries.
    assert pod["restartPolicy"] == "Never"
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in job["spec"]["podFailurePolicy"]["rules"]
    gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    world = nodes * max(gpus, 1)
    rank0 = f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert config.trainer.weight_transfer_address == rank0
    assert config.trainer.parallelism == ("fsdp2" if world > 1 else "single")
    # The run directory (checkpoints to resume from) is on the shared volume, read-write.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert str(config.run.output_dir).startswith(mounts["shared"]["mountPath"] + "/")
    assert not mounts["shared"].get("readOnly")
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]
    assert mounts["shm"]["mountPath"] == "/dev/shm"
    if world == 1:
        assert container["args"] == ["train", "--recipe", "/etc/agentrl/recipe.yaml"]
        return
    command = container["command"]
    assert command[:5] == ["tini", "--", "python", "-m", "torch.distributed.run"]
    flags = dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    assert flags["--nnodes"] == str(nodes)
    assert flags["--nproc-per-node"] == str(max(gpus, 1))
    assert flags["--master-addr"] == rank0
    assert flags["--node-rank"] == "$(NODE_RANK)"
    (rank_env,) = [e for e in container["env"] if e["name"] == "NODE_RANK"]
    assert "job-completion-index" in rank_env["valueFrom"]["fieldRef"]["fieldPath"]
    rendezvous = {p["name"]: p["containerPort"] for p in container["ports"]}["rendezvous"]
    assert flags["--master-port"] == str(rendezvous)
    assert command[command.index("-m", 5) + 1 :][:2] == ["agentrl.common.cli", "train"]
    service = one(objects, "Service", pod["subdomain"])
    assert service["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("source", LOOP_SOURCES)
def test_rollout_drains_within_its_termination_grace(source, tmp_path):
    objects = objects_of(source)
    deployment = workload(objects, "Deployment", "-rollout")
    config = configs(objects, tmp_path)["rollout"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.rollout.shutdown_grace_s
    env = env_of(container_of(deployment))
    assert "AGENTRL__ROLLOUT__WORKER_ID" in env  # the pod's name


@pytest.mark.parametrize(
    ("source", "native"), [("helm:defaults", False), ("helm:native-transport", True)]
)
def test_the_weight_transport_opens_exactly_what_it_needs(source, native, tmp_path):
    objects = objects_of(source)
    resolved = configs(objects, tmp_path)
    assert resolved["trainer"].trainer.weight_transport == ("vllm" if native else "disk")
    backend = resolved["vllm"].inference.weight_transfer_backend
    assert backend == ("agentrl_gloo" if native else "none")

    def all_port_peers(component):
        policy = one(objects, "NetworkPolicy", f"agentrl-{component}")
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in policy["spec"]["ingress"]
            if "ports" not in rule
            for peer in rule["from"]
        }

    assert all_port_peers("vllm") == ({"trainer"} if native else set())
    assert all_port_peers("trainer") == ({"trainer", "vllm"} if native else {"trainer"})
    # The disk transport: both sides on the same shared claim.
    claims = set()
    for obj in (workload(objects, "StatefulSet", "-vllm"), workload(objects, "Job", "-trainer")):
        volumes = obj["spec"]["template"]["spec"]["volumes"]
        claims |= {
            v["persistentVolumeClaim"]["claimName"] for v in volumes if v["name"] == "shared"
        }
    assert claims == {"agentrl-shared"}


@pytest.mark.parametrize("source", ["helm-file:gpu", "helm-file:large", "kustomize:overlays/gpu"])
def test_gpu_values_put_the_pool_and_trainer_on_gpus_and_nothing_else(source):
    objects = objects_of(source)
    for obj in (workload(objects, "StatefulSet", "-vllm"), workload(objects, "Job", "-trainer")):
        pod = obj["spec"]["template"]["spec"]
        assert int(container_of(obj)["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert obj["metadata"]["labels"]["agentrl.io/accelerator"] == "nvidia-gpu"
    for obj in find(objects, "Deployment"):
        limits = container_of(obj).get("resources", {}).get("limits", {})
        assert "nvidia.com/gpu" not in limits, obj["metadata"]["name"]


def test_large_values_size_the_trainer_as_a_multi_node_gang():
    objects = objects_of("helm-file:large")
    job = workload(objects, "Job", "-trainer")
    assert job["spec"]["completions"] == 4
    assert int(container_of(job)["resources"]["limits"]["nvidia.com/gpu"]) == 8
    assert workload(objects, "StatefulSet", "-vllm")["spec"]["replicas"] == 32
    budget = one(objects, "PodDisruptionBudget", "agentrl-trainer")
    assert budget["spec"]["minAvailable"] == 4


@pytest.mark.parametrize("source", ["helm:defaults", "kustomize:base"])
def test_redis_keeps_an_append_only_file_on_a_claim(source):
    objects = objects_of(source)
    deployment = one(objects, "Deployment", "agentrl-redis")
    args = container_of(deployment)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (data,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    one(objects, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_redis_persistence_off_falls_back_to_an_emptydir():
    objects = render({"redis": {"persistence": {"enabled": False}}})
    deployment = one(objects, "Deployment", "agentrl-redis")
    (data,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data == {"name": "data", "emptyDir": {}}
    assert not find(objects, "PersistentVolumeClaim", "agentrl-redis")


def test_the_dashboards_configmap_carries_every_dashboard_for_the_sidecar():
    objects = objects_of("helm:defaults")
    config_map = one(objects, "ConfigMap", "agentrl-dashboards")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files and sorted(config_map["data"]) == [f.name for f in files]
    for path in files:
        assert json.loads(config_map["data"][path.name]) == json.loads(path.read_text())


def test_the_pod_monitor_is_off_by_default_and_scrapes_every_metrics_port_when_on():
    assert not find(objects_of("helm:defaults"), "PodMonitor")
    objects = objects_of("helm:monitoring")
    (monitor,) = find(objects, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http"]
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        labels = obj["spec"]["template"]["metadata"]["labels"]
        ports = {
            p["name"]
            for c in obj["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        if obj["metadata"]["name"].endswith("-redis"):
            continue  # no metrics endpoint
        assert selector.items() <= labels.items() and "http" in ports, obj["metadata"]["name"]
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        http = [p for c in obj["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        assert annotations["prometheus.io/port"] == str(
            next(p["containerPort"] for p in http if p["name"] == "http")
        )


def test_kustomize_loop_is_generated_from_the_chart_and_up_to_date():
    result = subprocess.run(
        [sys.executable, str(K8S / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomize_recipe_holds_the_loop_keys_the_chart_computes():
    chart = yaml.safe_load(
        one(objects_of("helm:defaults"), "ConfigMap", "agentrl-recipe")["data"]["recipe.yaml"]
    )
    base = yaml.safe_load((K8S / "base" / "recipe.yaml").read_text())
    for section in ("model", "data", "inference", "rollout", "trainer"):
        assert base[section] == chart[section], section


def test_values_files_are_documented_in_the_deploy_guide():
    guide = (REPO / "docs" / "deploy.md").read_text()
    for path in CHART.glob("values-*.yaml"):
        assert f"helm/agentrl/{path.name}" in guide, path.name


def test_the_pod_monitor_component_scrapes_what_the_charts_pod_monitor_does(tmp_path):
    # An overlay of the base with the component, as its kustomization's comment says to write.
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(K8S / 'base', tmp_path)}]\n"
        f"components: [{os.path.relpath(K8S / 'components/pod-monitor', tmp_path)}]\n"
    )
    objects = build(tmp_path)
    (monitor,) = find(objects, "PodMonitor")
    assert monitor["metadata"]["namespace"] == "agentrl"
    (chart,) = find(objects_of("helm:monitoring"), "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"] == chart["spec"]["podMetricsEndpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = set()
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = obj["spec"]["template"]
            ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            if selector.items() <= template["metadata"]["labels"].items() and "http" in ports:
                scraped.add(template["metadata"]["labels"]["app.kubernetes.io/component"])
    assert scraped == {"sandbox", "reward", "search", "vllm", "rollout", "trainer"}
