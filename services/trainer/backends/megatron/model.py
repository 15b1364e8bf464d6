"""A megatron-core GPTModel for a Hugging Face Qwen3 / Qwen2(.5) / Llama config, and its forward
on packed micro-batches.

    init_parallel(layout)                               # process groups (after torch.distributed)
    model = build_gpt_model(hf_config, layout, ...)     # this rank's stage and tensor shard
    logits = forward_stage(model, rope, input_ids, position_ids, cu_seqlens)

The model uses megatron-core's LOCAL layer spec (no Transformer Engine): RMSNorm, SwiGLU
(`linear_fc1` = [gate; up]), grouped-query attention with fused QKV, QK-norm for Qwen3,
q/k/v bias for Qwen2, dropout 0. The weights' names and shapes are convert.py's tables.

RoPE: the frequencies come from the Hugging Face model's own rotary class (`Rope`), so the base
and every scaling type transformers computes statically (llama3, linear, yarn without
attention scaling) match it exactly; the rotary tensor is built from the micro-batch's
position ids, which restart at 0 for each packed sequence (megatron's own rotary module indexes
by row position, which is right only for one sequence per row).

Packed sequences: one [1, T] row per micro-batch (packing.py's layout) with an explicit
block-diagonal causal mask (bool, True = masked) for megatron's unfused attention; THD
(`PackedSeqParams`) needs Transformer Engine or flash attention and is not used here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from agentrl.trainer.backends.megatron import cpu
from agentrl.trainer.backends.megatron.convert import ModelShape, ParallelLayout

Recompute = Literal["none", "full", "selective"]


def init_parallel(layout: ParallelLayout) -> None:
    """megatron-core's model-parallel groups over the initialised default process group (a
    one-process gloo group is created when none exists), and its RNG tracker."""
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state

    cpu.enable()
    if torch.cuda.is_available():  # one GPU per rank, as torchrun numbers them
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # Its own rendezvous address, not MASTER_ADDR/MASTER_PORT in os.environ: set there, they
        # outlive the group and every process this one starts inherits a port that may be held
        # (a CLI run started after an in-process one failed to bind it).
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        address = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(backend, init_method=address, rank=0, world_size=1)
    world = dist.get_world_size()
    if world % (layout.tp * layout.pp):
        raise ValueError(
            f"world size {world} does not divide by tensor_parallel_size {layout.tp} x "
            f"pipeline_parallel_size {layout.pp}; launch a multiple of {layout.tp * layout.pp} "
            "processes or change trainer.megatron's sizes"
        )
    if parallel_state.model_parallel_is_initialized():
        if (
            parallel_state.get_tensor_model_parallel_world_size() == layout.tp
            and parallel_state.get_pipeline_model_parallel_world_size() == layout.pp
        ):
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp
    )
    cpu.init_rng_tracker()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def transformer_config(
    hf_config: Any,
    layout: ParallelLayout,
    *,
    dtype: torch.dtype = torch.float32,
    recompute: Recompute = "none",
):
    """The TransformerConfig of `hf_config` for `layout` (CPU-safe: nothing fused)."""
    import torch.nn.functional as F
    from megatron.core.transformer import TransformerConfig

    shape = ModelShape.from_hf(hf_config)
    layout.check(shape)
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config.hidden_act!r}: only SwiGLU (silu) is mapped")
    extra: dict[str, Any] = {}
    if recompute == "full":
        extra.update(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        )
    elif recompute == "selective":
        extra.update(recompute_granularity="selective")
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads,
        kv_channels=shape.head_dim,
        ffn_hidden_size=shape.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=hf_config.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.family == "qwen2",
        qk_layernorm=shape.family == "qwen3",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        params_dtype=torch.float32,  # master weights; bf16 runs under autocast
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        use_cpu_initialization=True,
        perform_initialization=False,  # every weight is loaded from the checkpoint
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        **extra,
    )


def build_gpt_model(hf_config: Any, layout: ParallelLayout, **config_kwargs):
    """This rank's GPTModel (its pipeline stage, its tensor shard); `init_parallel` first."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    shape = ModelShape.from_hf(hf_config)
    config = transformer_config(hf_config, layout, **config_kwargs)
    spec = get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization="RMSNorm")
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=layout.padded_vocab_size(shape.vocab_size),
        max_sequence_length=getattr(hf_config, "max_position_embeddings", 4096),
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        # A tied head at PP > 1 is an ordinary output layer on the last stage, loaded from the
        # embedding; the backend sums the two copies' gradients (megatron-core's own set-up of
        # that copy moves it with .cuda(), which a CPU rank cannot do, and its initial
        # all-reduce is not needed: both copies are loaded from the checkpoint).
        share_embeddings_and_output_weights=shape.tied_embeddings and layout.pp == 1,
        position_embedding_type="rope",
        parallel_output=True,
    )


@dataclass(frozen=True)
class Rope:
    """The Hugging Face model's RoPE inverse frequencies (base and static scaling included)."""

    inv_freq: torch.Tensor

    @classmethod
    def from_hf(cls, hf_config: Any) -> Rope:
        import importlib

        family = ModelShape.from_hf(hf_config).family
        names = {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama"}
        module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        rotary = getattr(module, f"{names[family]}RotaryEmbedding")(hf_config)
        if getattr(rotary, "rope_type", "default") == "dynamic":
            raise ValueError("dynamic RoPE scaling changes with the length; it is not mapped")
        if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
            raise ValueError(
                f"RoPE type {rotary.rope_type!r} scales attention by "
                f"{rotary.attention_scaling}; only scalings without it are mapped"
            )
        return cls(inv_freq=rotary.inv_freq.float().cpu())

    def embedding(self, position_ids: torch.Tensor) -> torch.Tensor:
        """megatron's rotary tensor [T, 1, 1, head_dim] for one row of position ids."""
        freqs = position_ids.flatten().float()[:, None] * self.inv_freq.to(position_ids.device)
        return torch.cat([freqs, freqs], dim=-1)[:, None, None, :]


def causal_mask(cu_seqlens: torch.Tensor | None, length: int, device) -> torch.Tensor:
    """[1, 1, T, T] bool, True where a query must NOT see a key (other sequence, or later)."""
    if cu_seqlens is None:
        seq = torch.zeros(length, dtype=torch.long)
    else:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    positions = torch.arange(length)
    allowed = (seq[:, None] == seq[None, :]) & (positions[None, :] <= positions[:, None])
    return (~allowed)[None, None].to(device)


def forward_stage(
    model,
    rope: Rope,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    input_tensor: torch.Tensor | None = None,
) -> torch.Tensor:
    """One pipeline stage's forward of a [1, T] row: hidden states [T, 1, H] for the next
    stage, or on the last stage the vocabulary-parallel logits [T, 1, V_padded / TP]."""
    if model.pre_process:
        hidden = model.embedding(input_ids=input_ids, position_ids=position_ids)
    else:
        model.decoder.set_input_tensor(input_tensor)
        hidden = None
    mask = causal_mask(cu_seqlens, input_ids.shape[-1], input_ids.device)
    hidden = model.decoder(
        hidden_states=hidden, attention_mask=mask, rotary_pos_emb=rope.embedding(position_ids)
    )
    if not model.post_process:
        return hidden
    weight = (
        model.shared_embedding_or_output_weight()
        if model.share_embeddings_and_output_weights
        else None
    )
    logits, _ = model.output_layer(hidden, weight=weight)
    return logits
