"""`trainer.backend: megatron` in `agentrl config validate`: the sizes that do not divide the
model are named with the setting to change; what is not built (FSDP2) is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.common.config import ConfigError, load_config


def recipe(tmp_path: Path, megatron: str, model: dict | None = None) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    config = {
        "model_type": "qwen3",
        "num_attention_heads": 12,
        "num_key_value_heads": 6,
        "intermediate_size": 96,
        "num_hidden_layers": 6,
        **(model or {}),
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model:\n  path: {model_dir}\ntrainer:\n  backend: megatron\n  megatron:\n{megatron}"
    )
    return path


def issues(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return {issue.path: issue.message for issue in info.value.issues}


def test_a_layout_that_fits_validates(tmp_path):
    config = load_config(
        recipe(tmp_path, "    tensor_parallel_size: 2\n    recompute: full\n"), env={}
    )
    assert config.trainer.megatron.tensor_parallel_size == 2
    assert config.trainer.megatron.recompute == "full"


def test_every_size_that_does_not_divide_is_named(tmp_path):
    found = issues(
        recipe(
            tmp_path,
            "    tensor_parallel_size: 4\n",
            {"num_attention_heads": 10, "num_key_value_heads": 5},
        )
    )
    (message,) = found.values()
    assert (
        "attention heads (10) do not divide by trainer.megatron.tensor_parallel_size 4" in message
    )
    assert "key/value heads (5) do not divide by trainer.megatron.tensor_parallel_size 4" in message
    assert "MLP hidden size" not in message  # 96 divides by 4
    assert "change trainer.megatron's sizes" in message


def test_an_unmapped_family_is_named(tmp_path):
    (message,) = issues(recipe(tmp_path, "    recompute: none\n", {"model_type": "gpt2"})).values()
    assert "model_type 'gpt2' has no Megatron mapping; supported: qwen3, qwen2, llama" in message


def test_pipeline_stages_validate_with_tied_and_untied_embeddings(tmp_path):
    for tied in (False, True):
        path = recipe(tmp_path, "    pipeline_parallel_size: 2\n", {"tie_word_embeddings": tied})
        config = load_config(path, env={})
        assert config.trainer.megatron.pipeline_parallel_size == 2


def test_fsdp2_is_refused_with_the_fix(tmp_path):
    path = recipe(tmp_path, "    tensor_parallel_size: 2\n")
    path.write_text(path.read_text() + "  parallelism: fsdp2\n")
    assert "leave trainer.parallelism at 'single'" in issues(path)["trainer"]


def test_what_megatron_trains_on_cuda_only_is_refused_on_cpu(tmp_path):
    path = recipe(tmp_path, "    recompute: full\n")
    path.write_text(path.read_text() + "  device: cpu\n")
    assert "recompute needs CUDA" in issues(path)["(recipe)"]
    path.write_text(path.read_text().replace("recompute: full", "recompute: none"))
    path.write_text(path.read_text().replace("trainer:", "  dtype: bfloat16\ntrainer:", 1))
    assert "use model.dtype: float32 on CPU" in issues(path)["(recipe)"]
