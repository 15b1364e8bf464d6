"""The launcher starts `vllm serve` with the `inference.server` settings of the recipe."""

from pathlib import Path

from agentrl.common.config import load_config
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
