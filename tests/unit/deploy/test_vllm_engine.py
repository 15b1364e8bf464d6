"""The vLLM pool's engine settings: what the chart's `vllm.*` values and the kustomize overlays
make each replica's launcher pass to `vllm serve` (tensor parallelism over the replica's GPUs,
eager mode, GPU memory share, extra flags), read through the real config loader and the real
launcher's command line, and the values that must fail at render time.
"""

from __future__ import annotations

import re

import pytest
from deploy_render import CHART, ToolError, objects_of, render
from test_loop_manifests import container_of, workload
from test_policies import config_of

from agentrl.common.config import LAUNCHER_MANAGED_FLAGS
from agentrl.common.inference.launcher import build_command


def vllm_command(objects, tmp_path) -> tuple[list[str], int]:
    """The replica's `vllm serve` argv as its launcher builds it, and its GPU limit."""
    pool = workload(objects, "StatefulSet", "-vllm")
    container = container_of(pool)
    config = config_of(objects, pool["spec"]["template"]["spec"], container, tmp_path)
    gpus = int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    return build_command(config.inference.server, tmp_path, port=8000), gpus


@pytest.mark.parametrize(
    "source",
    [
        "helm:defaults",
        "helm:vllm-tensor-parallel",
        "helm-file:small",
        "helm-file:gpu",
        "helm-file:large",
        "kustomize:base",
        "kustomize:overlays/cpu-dev",
        "kustomize:overlays/gpu",
    ],
)
def test_each_replica_shards_over_its_gpus_and_is_eager_only_on_cpu(source, tmp_path):
    command, gpus = vllm_command(objects_of(source), tmp_path)
    if gpus > 1:
        assert command[command.index("--tensor-parallel-size") + 1] == str(gpus)
    else:
        assert "--tensor-parallel-size" not in command
    assert ("--enforce-eager" in command) == (gpus == 0), (source, gpus)


def test_tensor_parallel_values_reach_the_command_line(tmp_path):
    command, gpus = vllm_command(objects_of("helm:vllm-tensor-parallel"), tmp_path)
    assert gpus == 2
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.85"
    assert command[-1] == "--enable-prefix-caching"


@pytest.mark.parametrize(("gpus", "eager"), [(0, False), (1, True)])
def test_enforce_eager_set_explicitly_wins_over_the_device_default(gpus, eager, tmp_path):
    objects = render({"vllm": {"gpus": gpus, "enforceEager": eager}})
    command, _ = vllm_command(objects, tmp_path)
    assert ("--enforce-eager" in command) == eager


def test_the_chart_refuses_the_same_extra_flags_as_the_config():
    # The template keeps its own copy of the launcher's flags (Helm cannot read Python).
    template = (CHART / "templates" / "_helpers.tpl").read_text()
    (line,) = [line for line in template.splitlines() if line.startswith("{{- $managed := list")]
    assert set(re.findall(r'"(-[a-z-]+)"', line)) == set(LAUNCHER_MANAGED_FLAGS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vllm": {"extraArgs": ["--port=9000"]}}, "vllm.extraArgs sets --port"),
        ({"vllm": {"extraArgs": ["--tensor-parallel-size", "2"]}}, "use vllm.gpus"),
        ({"vllm": {"extraArgs": [""]}}, "/vllm/extraArgs/0"),
        ({"vllm": {"gpuMemoryUtilization": 1.5}}, "/vllm/gpuMemoryUtilization"),
        ({"vllm": {"enforceEager": "yes"}}, "/vllm/enforceEager"),
        ({"vllm": {"tensorParallelSize": 2}}, "'tensorParallelSize' not allowed"),
    ],
)
def test_bad_engine_values_fail_naming_the_value(values, message):
    with pytest.raises(ToolError, match=message):
        render(values)
