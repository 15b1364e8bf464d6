"""The launcher starts `vllm serve` with the `inference.server` settings of the recipe."""

from pathlib import Path

import pytest

from agentrl.common.config import ConfigError, load_config
from agentrl.common.inference.launcher import build_command, build_env


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_server_section_reaches_the_flags_and_the_environment(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("inference:\n  server:\n    dtype: bfloat16\n    max_num_seqs: 7\n")
    config = load_config(
        recipe,
        env={
            "AGENTRL__INFERENCE__SERVER__MAX_MODEL_LEN": "2048",
            "AGENTRL__INFERENCE__SERVER__KV_CACHE_GIB": "3",
        },
    )
    command = build_command(config.inference.server, tmp_path, port=8123)
    assert flag(command, "--dtype") == "bfloat16"
    assert flag(command, "--max-num-seqs") == "7"  # from the recipe
    assert flag(command, "--max-model-len") == "2048"  # from the environment
    assert flag(command, "--port") == "8123"
    assert build_env(config.inference.server)["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_engine_settings_reach_the_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "inference:\n  server:\n    tensor_parallel_size: 4\n    enforce_eager: false\n"
        "    gpu_memory_utilization: 0.85\n    extra_args: [--enable-prefix-caching]\n"
    )
    command = build_command(load_config(recipe).inference.server, tmp_path, port=8123)
    assert flag(command, "--tensor-parallel-size") == "4"
    assert flag(command, "--gpu-memory-utilization") == "0.85"
    assert "--enforce-eager" not in command
    assert command[-1] == "--enable-prefix-caching"


def test_the_defaults_keep_a_cpu_server_eager_on_one_device(tmp_path: Path) -> None:
    command = build_command(load_config(None).inference.server, tmp_path, port=8123)
    assert "--enforce-eager" in command
    assert "--tensor-parallel-size" not in command
    assert "--gpu-memory-utilization" not in command


@pytest.mark.parametrize("arg", ["--port=9000", "--tensor-parallel-size", "--enforce-eager"])
def test_extra_args_may_not_repeat_a_flag_the_launcher_sets(tmp_path: Path, arg: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"inference:\n  server:\n    extra_args: ['{arg}']\n")
    with pytest.raises(ConfigError, match=f"extra_args sets {arg.split('=')[0]}"):
        load_config(recipe)
