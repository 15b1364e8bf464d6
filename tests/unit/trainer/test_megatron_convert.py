"""Hugging Face <-> Megatron conversion (backends/megatron/convert.py): round trips for Qwen3,
Qwen2 and Llama at TP 1, 2, 4 x PP 1, 2, the checks that name a bad tensor, and the tables
against a real megatron-core GPTModel where megatron-core is installed."""

from __future__ import annotations

import pytest
import torch

from agentrl.trainer.backends.megatron.convert import (
    ConversionError,
    ModelShape,
    ParallelLayout,
    hf_to_megatron,
    megatron_shapes,
    megatron_to_hf,
)

# Small but with every feature the tables map: GQA (8 heads, 4 kv groups), head_dim != hidden /
# heads (Qwen3), an odd vocabulary (padding), 4 layers (split over 2 stages).
COMMON = {
    "vocab_size": 203,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
}


def hf_config(family: str, tied: bool):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if family == "qwen3":
        return Qwen3Config(**COMMON, head_dim=8, tie_word_embeddings=tied)
    if family == "qwen2":
        return Qwen2Config(**COMMON, tie_word_embeddings=tied)
    return LlamaConfig(**COMMON, tie_word_embeddings=tied)


def hf_model(family: str, tied: bool, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family, tied))
    # Random norms and biases too (their default init is all ones / zeros: a swap would pass).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model.eval()


def saved_state(model) -> dict[str, torch.Tensor]:
    """What a safetensors checkpoint holds: a tied head is absent."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    return state


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("pp", [1, 2])
def test_round_trip_is_bit_exact(family, tp, pp):
    tied = tp == 2  # both tied and untied heads are covered at every PP
    model = hf_model(family, tied)
    shape = ModelShape.from_hf(model.config)
    layout = ParallelLayout(tp=tp, pp=pp, vocab_multiple=16)
    state = saved_state(model)
    shards = hf_to_megatron(state, shape, layout)
    expected = megatron_shapes(shape, layout)
    assert set(shards) == {(p, t) for p in range(pp) for t in range(tp)}
    for key, local in shards.items():
        assert {n: tuple(t.shape) for n, t in local.items()} == expected[key]
    back = megatron_to_hf(shards, shape, layout)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name
    if tied:
        with_head = megatron_to_hf(shards, shape, layout, tied_head=True)
        assert torch.equal(with_head["lm_head.weight"], state["model.embed_tokens.weight"])


def test_fused_layouts_are_megatrons():
    """The exact positions of q/k/v rows (per-group interleave) and gate/up rows per rank."""
    model = hf_model("qwen3", tied=False)
    shape = ModelShape.from_hf(model.config)
    layout = ParallelLayout(tp=2, pp=2, vocab_multiple=16)
    state = saved_state(model)
    shards = hf_to_megatron(state, shape, layout)
    d, per_group = 8, 2  # head_dim, query heads per kv group
    q = state["model.layers.3.self_attn.q_proj.weight"]
    k = state["model.layers.3.self_attn.k_proj.weight"]
    v = state["model.layers.3.self_attn.v_proj.weight"]
    # Global layer 3 is stage 1's local layer 1; tensor rank 1 holds kv groups 2 and 3.
    qkv = shards[(1, 1)]["decoder.layers.1.self_attention.linear_qkv.weight"]
    group = 2
    rows = (per_group + 2) * d
    assert torch.equal(
        qkv[:rows][: per_group * d], q[group * per_group * d : (group + 1) * per_group * d]
    )
    assert torch.equal(
        qkv[:rows][per_group * d : (per_group + 1) * d], k[group * d : (group + 1) * d]
    )
    assert torch.equal(qkv[:rows][(per_group + 1) * d :], v[group * d : (group + 1) * d])
    fc1 = shards[(0, 1)]["decoder.layers.0.mlp.linear_fc1.weight"]
    gate = state["model.layers.0.mlp.gate_proj.weight"]
    up = state["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(fc1, torch.cat([gate[24:], up[24:]]))
    embedding = shards[(0, 1)]["embedding.word_embeddings.weight"]  # rows 112..223 of 224
    assert torch.equal(embedding[: 203 - 112], state["model.embed_tokens.weight"][112:])
    assert not embedding[203 - 112 :].any()  # padding


def test_errors_name_the_tensor():
    model = hf_model("qwen2", tied=False)
    shape = ModelShape.from_hf(model.config)
    layout = ParallelLayout(tp=2, pp=1)
    state = saved_state(model)
    missing = dict(state)
    missing.pop("model.layers.1.self_attn.k_proj.bias")
    with pytest.raises(ConversionError, match=r"missing model\.layers\.1\.self_attn\.k_proj\.bias"):
        hf_to_megatron(missing, shape, layout)
    extra = {**state, "model.layers.0.self_attn.q_norm.weight": torch.ones(4)}
    with pytest.raises(ConversionError, match=r"not mapped model\.layers\.0\.self_attn\.q_norm"):
        hf_to_megatron(extra, shape, layout)
    wrong = {**state, "model.layers.0.mlp.down_proj.weight": torch.zeros(32, 40)}
    with pytest.raises(ConversionError, match=r"down_proj\.weight give .* expected"):
        hf_to_megatron(wrong, shape, layout)
    shards = hf_to_megatron(state, shape, layout)
    del shards[(0, 1)]["decoder.final_layernorm.weight"]
    with pytest.raises(ConversionError, match=r"tensor rank 1: missing decoder\.final_layernorm"):
        megatron_to_hf(shards, shape, layout)


def test_sizes_that_do_not_divide_are_named():
    shape = ModelShape.from_hf(hf_config("llama", tied=False))
    with pytest.raises(ConversionError) as error:
        megatron_shapes(shape, ParallelLayout(tp=8, pp=3))
    message = str(error.value)
    assert "key/value heads (4) do not divide by tensor_parallel_size 8" in message
    assert "layers (4) do not divide by pipeline_parallel_size 3" in message
    with pytest.raises(ConversionError, match="model_type 'gpt2' has no Megatron mapping"):
        ModelShape.from_hf({"model_type": "gpt2"})


megatron_core = pytest.importorskip("megatron.core", reason="megatron-core is not installed")


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama"])
def test_tables_match_a_real_gpt_model(family, megatron_tp1):
    """Names and shapes of megatron-core's own GPTModel (TP 1, PP 1, in this process) equal
    the table's; the multi-rank layouts are checked in test_megatron_ranks.py."""
    from agentrl.trainer.backends.megatron.model import build_gpt_model

    for tied in (False, True):
        config = hf_config(family, tied)
        layout = ParallelLayout(tp=1, pp=1, vocab_multiple=16)
        model = build_gpt_model(config, layout)
        real = {
            name: tuple(tensor.shape)
            for name, tensor in model.state_dict().items()
            if not name.endswith("_extra_state")
        }
        assert real == megatron_shapes(ModelShape.from_hf(config), layout)[(0, 0)]


@pytest.fixture(scope="module")
def megatron_tp1():
    """megatron-core's parallel state at TP 1, PP 1 on a one-process gloo group, torn down
    after the module so later tests see no process group."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from agentrl.trainer.backends.megatron.model import init_parallel

    init_parallel(ParallelLayout(tp=1, pp=1))
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
