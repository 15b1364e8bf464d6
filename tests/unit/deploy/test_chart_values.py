"""What each value of the Helm chart (helm/agentrl) changes in the rendered objects.

Schema validity of these renders is checked in test_manifests.py; here each toggle must have
its effect, and only that effect, and bad combinations must fail at render time with a message
that names the value to change.
"""

from __future__ import annotations

import json

import pytest
import yaml
from deploy_render import (
    CHART,
    ToolError,
    env_of,
    find,
    objects_of,
    one,
    render,
    service_deployments,
    validate,
)


def pod_spec(objects, service):
    return service_deployments(objects)[service]["spec"]["template"]["spec"]


def recipe_of(objects):
    (config_map,) = [
        c for c in find(objects, "ConfigMap") if c["metadata"]["name"].endswith("-recipe")
    ]
    return yaml.safe_load(config_map["data"]["recipe.yaml"])


def test_defaults_run_a_builtin_redis_that_the_recipe_points_at():
    objects = objects_of("helm:defaults")
    one(objects, "Deployment", "agentrl-redis")
    one(objects, "Service", "agentrl-redis")
    assert recipe_of(objects)["redis"]["url"] == "redis://agentrl-redis:6379/0"


def test_external_redis_url_replaces_the_builtin_redis():
    objects = objects_of("helm:external-redis-url")
    assert not [o for o in objects if o["metadata"]["name"].endswith("-redis")]
    assert recipe_of(objects)["redis"]["url"] == "redis://redis.example:6379/0"


def test_external_redis_from_a_secret_reaches_every_service_as_env():
    objects = objects_of("helm:external-redis-secret")
    assert not find(objects, "Deployment", "agentrl-redis")
    assert "redis" not in recipe_of(objects)
    for name in service_deployments(objects):
        (env,) = [
            e
            for e in pod_spec(objects, name)["containers"][0]["env"]
            if e["name"] == "AGENTRL__REDIS__URL"
        ]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "redis-url", "key": "url"}


def test_external_redis_without_an_address_fails_with_the_value_to_set():
    with pytest.raises(ToolError, match="redis.url or redis.existingSecret"):
        render({"redis": {"external": True}})


def test_gpus_add_the_gpu_node_selector_toleration_and_limit_to_that_service_only():
    objects = objects_of("helm:search-on-gpu")
    search = pod_spec(objects, "search")
    assert search["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        search["tolerations"]
    )
    assert search["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The chart's defaults are untouched (a shared dict mutated by one service would leak).
    assert search["containers"][0]["resources"]["limits"]["cpu"] == "2"
    for name in ("sandbox", "reward"):
        spec = pod_spec(objects, name)
        assert "nodeSelector" not in spec and "tolerations" not in spec
        assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"]


def test_own_node_selector_and_tolerations_merge_with_the_gpu_ones():
    objects = render(
        {
            "services": {
                "search": {
                    "gpus": 2,
                    "nodeSelector": {"pool": "retrieval"},
                    "tolerations": [
                        {
                            "key": "dedicated",
                            "operator": "Equal",
                            "value": "search",
                            "effect": "NoSchedule",
                        }
                    ],
                }
            }
        }
    )
    spec = pod_spec(objects, "search")
    assert spec["nodeSelector"] == {"pool": "retrieval", "nvidia.com/gpu.present": "true"}
    assert [t["key"] for t in spec["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_fixed_replicas_are_honoured_when_autoscaling_is_off():
    objects = objects_of("helm:fixed-replicas")
    deployments = service_deployments(objects)
    assert deployments["sandbox"]["spec"]["replicas"] == 5
    assert deployments["reward"]["spec"]["replicas"] == 3
    assert deployments["search"]["spec"]["replicas"] == 2
    assert not find(objects, "HorizontalPodAutoscaler")


def test_autoscaling_bounds_and_target_come_from_values():
    objects = render(
        {
            "services": {
                "sandbox": {
                    "autoscaling": {
                        "minReplicas": 3,
                        "maxReplicas": 50,
                        "targetCPUUtilizationPercentage": 55,
                    }
                }
            }
        }
    )
    hpa = one(objects, "HorizontalPodAutoscaler", "agentrl-sandbox")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 50)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 55


def test_release_name_prefixes_every_object_and_every_address():
    objects = render(name="prod")
    names = {o["metadata"]["name"] for o in objects}
    assert {"prod-agentrl-sandbox", "prod-agentrl-redis", "prod-agentrl-recipe"} <= names
    recipe = recipe_of(objects)
    assert recipe["sandbox"]["address"] == "prod-agentrl-sandbox:50051"
    assert recipe["redis"]["url"] == "redis://prod-agentrl-redis:6379/0"
    assert recipe["run"]["run_id"] == "prod"


def test_recipe_values_merge_over_the_computed_recipe():
    objects = render(
        {"recipe": {"sandbox": {"default_timeout_s": 20}, "search": {"default_top_k": 5}}}
    )
    recipe = recipe_of(objects)
    assert recipe["sandbox"] == {
        "address": "agentrl-sandbox:50051",
        "backend": "bwrap",
        "max_concurrency": 4,
        "default_timeout_s": 20,
    }
    assert recipe["search"]["default_top_k"] == 5
    assert recipe["search"]["index_dir"] == "/var/lib/agentrl/search-index"


def test_a_changed_recipe_rolls_the_pods():
    def checksum(objects):
        template = service_deployments(objects)["reward"]["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/recipe"]

    changed = render({"recipe": {"reward": {"verifier_timeout_s": 30}}})
    assert checksum(objects_of("helm:defaults")) != checksum(changed)


def test_shared_volume_is_mounted_only_where_asked_and_read_only_for_search():
    objects = objects_of("helm:defaults")
    claim = one(objects, "PersistentVolumeClaim", "agentrl-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    search = pod_spec(objects, "search")
    (mount,) = [m for m in search["containers"][0]["volumeMounts"] if m["name"] == "shared"]
    assert mount == {"name": "shared", "mountPath": "/var/lib/agentrl", "readOnly": True}
    for name in ("sandbox", "reward"):
        assert "shared" not in [v["name"] for v in pod_spec(objects, name)["volumes"]]


def test_an_existing_claim_replaces_the_chart_claim():
    objects = objects_of("helm:existing-claim")
    assert not find(objects, "PersistentVolumeClaim", "agentrl-shared")
    (volume,) = [v for v in pod_spec(objects, "search")["volumes"] if v["name"] == "shared"]
    assert volume["persistentVolumeClaim"]["claimName"] == "weights"


def test_prometheus_annotations_can_be_turned_off():
    objects = render({"prometheus": {"scrape": False}})
    for deployment in service_deployments(objects).values():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert not [k for k in annotations if k.startswith("prometheus.io/")]


def test_image_and_auth_secret_names_come_from_values():
    objects = render(
        {
            "image": {"repository": "registry.example/agentrl", "tag": "abc123"},
            "auth": {"secretName": "prod-token", "secretKey": "value"},
        }
    )
    for name in service_deployments(objects):
        spec = pod_spec(objects, name)
        image = "agentrl-loop:0.1.0" if name == "rollout" else "registry.example/agentrl:abc123"
        assert spec["containers"][0]["image"] == image
        (volume,) = [v for v in spec["volumes"] if v["name"] == "auth-token"]
        assert volume["secret"]["secretName"] == "prod-token"
        assert volume["secret"]["items"] == [{"key": "value", "path": "token"}]


def test_extra_env_reaches_the_container_and_the_config():
    objects = render({"services": {"sandbox": {"env": {"AGENTRL__SANDBOX__MAX_CONCURRENCY": 8}}}})
    env = env_of(pod_spec(objects, "sandbox")["containers"][0])
    assert env["AGENTRL__SANDBOX__MAX_CONCURRENCY"] == "8"
    validate(one(objects, "Deployment", "agentrl-sandbox"))


def test_a_disabled_service_disappears_with_its_address():
    objects = render({"services": {"search": {"enabled": False}}})
    assert "search" not in service_deployments(objects)
    assert not find(objects, "Service", "agentrl-search")
    assert "search" not in recipe_of(objects)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # values.schema.json
        (
            {"services": {"sandbox": {"securityProfile": "root"}}},
            "/services/sandbox/securityProfile",
        ),
        ({"services": {"search": {"sharedVolume": "rw"}}}, "/services/search/sharedVolume"),
        ({"services": {"sandbox": {"replica": 3}}}, "'replica' not allowed"),
        ({"redis": {"externl": True}}, "'externl' not allowed"),
        ({"replicaCount": 3}, "'replicaCount' not allowed"),
        # checks across values, in the templates
        ({"sharedVolume": {"enabled": False}}, "vllm.enabled needs sharedVolume.enabled"),
        (
            {
                "sharedVolume": {"enabled": False},
                **{name: {"enabled": False} for name in ("vllm", "rollout", "trainer")},
            },
            "sharedVolume.enabled is false",
        ),
        ({"vllm": {"enabled": False}}, "needs vllm.enabled"),
        ({"trainer": {"weightTransport": "nccl"}}, "/trainer/weightTransport"),
        ({"vllm": {"replica": 3}}, "'replica' not allowed"),
    ],
)
def test_bad_values_fail_with_the_value_to_change(values, message):
    with pytest.raises(ToolError, match=message):
        render(values)


def test_every_object_of_the_values_schema_refuses_unknown_keys():
    # What makes a misspelt key at any depth fail `helm lint/template` with its name: every
    # object the schema describes is closed; only free-form maps (env, labels, selectors) are
    # open, and they say what their values are.
    schema = json.loads((CHART / "values.schema.json").read_text())
    definitions = schema.get("definitions", {})
    open_objects = []

    def walk(node, path):
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[-1]]
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path)
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}.*")

    walk(schema, "")
    assert not open_objects
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])
