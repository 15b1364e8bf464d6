"""Hugging Face <-> Megatron-core weights: one mapping table per family, sharded for a TP/PP layout.

    shards = hf_to_megatron(hf_state, shape, layout)   # {(pp_rank, tp_rank): {name: tensor}}
    hf_state = megatron_to_hf(shards, shape, layout)   # gathers the shards back

`shards[(p, t)]` is exactly what `GPTModel.state_dict()` holds on pipeline stage p, tensor rank
t (megatron-core's local layer spec): layer numbers are LOCAL to the stage (stage p holds global
layers p·L/PP ... (p+1)·L/PP - 1 as 0 ... L/PP - 1). Nothing here imports megatron-core; the
layout is computed from the Hugging Face config alone (`megatron_shapes`), and a test checks it
against a real GPTModel where megatron-core is installed.

How each tensor is split (`Rule.split`):
- `replicated`: norms (input, pre-MLP, final, QK-norm); every tensor rank holds all of it.
- `column`: split along dim 0 (outputs); `row`: along dim 1 (inputs) (linear_proj, linear_fc2).
- `qkv`: q, k, v fused into `linear_qkv` in megatron's per-group interleaved layout: for each of
  the `num_kv_heads` query groups, that group's `heads / kv_heads` query heads, then its key
  head, then its value head (GQA). A contiguous split of dim 0 then gives each tensor rank
  whole groups (kv_heads must divide by TP). Biases (Qwen2) follow the same layout.
- `gate_up`: gate and up projections fused as `linear_fc1`; each tensor rank holds
  [its slice of gate; its slice of up] (SwiGLU's chunk(2) on the local output).
- `vocab`: embedding and output layer rows padded with zeros to a multiple of
  `vocab_multiple · TP` (megatron's padded vocabulary), then split along dim 0; gathering drops
  the padding.

Tied embeddings: the HF `lm_head.weight` is the embedding; at PP 1 megatron has no
`output_layer`, at PP > 1 the last stage holds a copy as `output_layer.weight` (megatron keeps
the two in sync by an all-reduce of their gradients). Every conversion checks that each input
tensor is mapped, none is missing and none is left over, and names the offending tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

Split = Literal["replicated", "column", "row", "qkv", "gate_up", "vocab"]


class ConversionError(ValueError):
    """A checkpoint that does not match its family's table (names the tensors)."""


@dataclass(frozen=True)
class Rule:
    """One Megatron tensor and the Hugging Face tensors it is made of (`{layer}`: per layer)."""

    hf: tuple[str, ...]
    megatron: str
    split: Split


_LAYER = "model.layers.{layer}."
_MLAYER = "decoder.layers.{layer}."

# The decoder layer every family shares (Llama's, without biases).
BASE_LAYER_RULES: tuple[Rule, ...] = (
    Rule((_LAYER + "input_layernorm.weight",), _MLAYER + "input_layernorm.weight", "replicated"),
    Rule(
        tuple(_LAYER + f"self_attn.{p}_proj.weight" for p in "qkv"),
        _MLAYER + "self_attention.linear_qkv.weight",
        "qkv",
    ),
    Rule(
        (_LAYER + "self_attn.o_proj.weight",), _MLAYER + "self_attention.linear_proj.weight", "row"
    ),
    Rule(
        (_LAYER + "post_attention_layernorm.weight",),
        _MLAYER + "pre_mlp_layernorm.weight",
        "replicated",
    ),
    Rule(
        (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"),
        _MLAYER + "mlp.linear_fc1.weight",
        "gate_up",
    ),
    Rule((_LAYER + "mlp.down_proj.weight",), _MLAYER + "mlp.linear_fc2.weight", "row"),
)
QKV_BIAS_RULE = Rule(
    tuple(_LAYER + f"self_attn.{p}_proj.bias" for p in "qkv"),
    _MLAYER + "self_attention.linear_qkv.bias",
    "qkv",
)
QK_NORM_RULES: tuple[Rule, ...] = (
    Rule(
        (_LAYER + "self_attn.q_norm.weight",),
        _MLAYER + "self_attention.q_layernorm.weight",
        "replicated",
    ),
    Rule(
        (_LAYER + "self_attn.k_norm.weight",),
        _MLAYER + "self_attention.k_layernorm.weight",
        "replicated",
    ),
)

# One table per family: the per-layer rules (the embedding, final norm and head are shared).
LAYER_RULES: dict[str, tuple[Rule, ...]] = {
    "llama": BASE_LAYER_RULES,
    "qwen2": (*BASE_LAYER_RULES, QKV_BIAS_RULE),  # attention bias on q, k, v (not o)
    "qwen3": (*BASE_LAYER_RULES, *QK_NORM_RULES),  # per-head RMSNorm on q and k, no bias
}
EMBEDDING_RULE = Rule(("model.embed_tokens.weight",), "embedding.word_embeddings.weight", "vocab")
FINAL_NORM_RULE = Rule(("model.norm.weight",), "decoder.final_layernorm.weight", "replicated")
OUTPUT_RULE = Rule(("lm_head.weight",), "output_layer.weight", "vocab")
TIED_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class ModelShape:
    """What the conversion needs of a Hugging Face config (Qwen3, Qwen2/2.5, Llama)."""

    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_hf(cls, config: Any) -> ModelShape:
        """From a transformers config object or its config.json as a dict."""

        def get(name: str, default: Any = None) -> Any:
            if isinstance(config, Mapping):
                return config.get(name, default)
            return getattr(config, name, default)

        family = get("model_type")
        if family not in LAYER_RULES:
            raise ConversionError(
                f"model_type {family!r} has no Megatron mapping table; supported: "
                f"{', '.join(sorted(LAYER_RULES))}"
            )
        if family == "llama" and (get("attention_bias") or get("mlp_bias")):
            raise ConversionError(
                "Llama with attention_bias or mlp_bias has no Megatron mapping table here "
                "(only bias-free Llama); use the torch backend"
            )
        heads = get("num_attention_heads")
        return cls(
            family=family,
            hidden_size=get("hidden_size"),
            num_layers=get("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or get("hidden_size") // heads,
            ffn_hidden_size=get("intermediate_size"),
            vocab_size=get("vocab_size"),
            tied_embeddings=bool(get("tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class ParallelLayout:
    """Tensor and pipeline parallel sizes, and megatron's vocabulary padding multiple."""

    tp: int = 1
    pp: int = 1
    vocab_multiple: int = 128
    """Megatron's `make_vocab_size_divisible_by`: the vocabulary is padded to a multiple of
    this times TP."""

    def padded_vocab_size(self, vocab_size: int) -> int:
        multiple = self.vocab_multiple * self.tp
        return -(-vocab_size // multiple) * multiple

    def check(self, shape: ModelShape) -> None:
        problems = layout_problems(shape, self)
        if problems:
            raise ConversionError("; ".join(problems))

    def stage_layers(self, shape: ModelShape, pp_rank: int) -> range:
        """Global layer numbers held by pipeline stage `pp_rank` (an even split)."""
        per_stage = shape.num_layers // self.pp
        return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def layout_problems(shape: ModelShape, layout: ParallelLayout) -> list[str]:
    """Each size that does not divide, named (empty: the layout fits the model)."""
    problems = []
    if layout.tp < 1 or layout.pp < 1:
        problems.append(f"parallel sizes must be >= 1 (TP {layout.tp}, PP {layout.pp})")
        return problems
    for what, size in [
        ("attention heads", shape.num_heads),
        ("key/value heads", shape.num_kv_heads),
        ("MLP hidden size", shape.ffn_hidden_size),
    ]:
        if size % layout.tp:
            problems.append(f"{what} ({size}) do not divide by tensor_parallel_size {layout.tp}")
    if shape.num_heads % shape.num_kv_heads:
        problems.append(
            f"attention heads ({shape.num_heads}) do not divide by key/value heads "
            f"({shape.num_kv_heads})"
        )
    if shape.num_layers % layout.pp:
        problems.append(
            f"layers ({shape.num_layers}) do not divide by pipeline_parallel_size {layout.pp}"
        )
    return problems


def _stage_rules(shape: ModelShape, layout: ParallelLayout, pp_rank: int) -> list[tuple[Rule, int]]:
    """(rule, global layer) for every tensor of stage `pp_rank` (layer -1: not per layer)."""
    rules: list[tuple[Rule, int]] = []
    if pp_rank == 0:
        rules.append((EMBEDDING_RULE, -1))
    for layer in layout.stage_layers(shape, pp_rank):
        rules.extend((rule, layer) for rule in LAYER_RULES[shape.family])
    if pp_rank == layout.pp - 1:
        rules.append((FINAL_NORM_RULE, -1))
        if not shape.tied_embeddings:
            rules.append((OUTPUT_RULE, -1))
        elif layout.pp > 1:  # the last stage's copy of the tied embedding
            rules.append((Rule(EMBEDDING_RULE.hf, OUTPUT_RULE.megatron, "vocab"), -1))
    return rules


def _names(rule: Rule, layer: int, local_layer: int) -> tuple[list[str], str]:
    hf = [name.format(layer=layer) for name in rule.hf]
    return hf, rule.megatron.format(layer=local_layer)


def _full_shape(rule: Rule, shape: ModelShape, layout: ParallelLayout) -> tuple[int, ...]:
    """The Megatron tensor's shape before tensor-parallel splitting (padded vocabulary)."""
    h, d = shape.hidden_size, shape.head_dim
    name = rule.megatron
    if rule.split == "vocab":
        return (layout.padded_vocab_size(shape.vocab_size), h)
    if rule.split == "qkv":
        rows = (shape.num_heads + 2 * shape.num_kv_heads) * d
        return (rows,) if name.endswith("bias") else (rows, h)
    if rule.split == "gate_up":
        return (2 * shape.ffn_hidden_size, h)
    if name.endswith("linear_proj.weight"):
        return (h, shape.num_heads * d)
    if name.endswith("linear_fc2.weight"):
        return (h, shape.ffn_hidden_size)
    if "q_layernorm" in name or "k_layernorm" in name:
        return (d,)
    return (h,)  # the other norms


def _local_shape(rule: Rule, full: tuple[int, ...], tp: int) -> tuple[int, ...]:
    if rule.split == "replicated":
        return full
    if rule.split == "row":
        return (full[0], full[1] // tp)
    return (full[0] // tp, *full[1:])


def megatron_shapes(
    shape: ModelShape, layout: ParallelLayout
) -> dict[tuple[int, int], dict[str, tuple[int, ...]]]:
    """{(pp_rank, tp_rank): {megatron name: local shape}}, without building a model."""
    layout.check(shape)
    out = {}
    for pp_rank in range(layout.pp):
        first = layout.stage_layers(shape, pp_rank).start
        names = {}
        for rule, layer in _stage_rules(shape, layout, pp_rank):
            _, name = _names(rule, layer, layer - first)
            names[name] = _local_shape(rule, _full_shape(rule, shape, layout), layout.tp)
        for tp_rank in range(layout.tp):
            out[(pp_rank, tp_rank)] = dict(names)
    return out


def replicated_names(shape: ModelShape, layout: ParallelLayout, pp_rank: int) -> set[str]:
    """Megatron names of stage `pp_rank` that every tensor rank holds whole (the norms): a
    global gradient norm counts them once, not once per tensor rank."""
    first = layout.stage_layers(shape, pp_rank).start
    return {
        _names(rule, layer, layer - first)[1]
        for rule, layer in _stage_rules(shape, layout, pp_rank)
        if rule.split == "replicated"
    }


def _fuse(rule: Rule, tensors: list[torch.Tensor], shape: ModelShape, layout: ParallelLayout):
    """The Hugging Face tensors of `rule` as one full Megatron tensor."""
    if rule.split == "qkv":
        q, k, v = tensors
        d, groups = shape.head_dim, shape.num_kv_heads
        per_group = shape.num_heads // groups
        tail = q.shape[1:]
        fused = torch.cat(
            [
                q.reshape(groups, per_group * d, *tail),
                k.reshape(groups, d, *tail),
                v.reshape(groups, d, *tail),
            ],
            dim=1,
        )
        return fused.reshape(-1, *tail)
    if rule.split == "gate_up":
        gate, up = tensors
        return torch.cat(
            [
                torch.cat(pair)
                for pair in zip(gate.chunk(layout.tp), up.chunk(layout.tp), strict=True)
            ]
        )
    (tensor,) = tensors
    if rule.split == "vocab":
        padded = tensor.new_zeros((layout.padded_vocab_size(tensor.shape[0]), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        return padded
    return tensor


def _unfuse(rule: Rule, full: torch.Tensor, shape: ModelShape, layout: ParallelLayout):
    """Inverse of `_fuse`: the Hugging Face tensors of `rule` from one full Megatron tensor."""
    if rule.split == "qkv":
        d, groups = shape.head_dim, shape.num_kv_heads
        per_group = shape.num_heads // groups
        tail = full.shape[1:]
        grouped = full.reshape(groups, (per_group + 2) * d, *tail)
        q, k, v = grouped.split([per_group * d, d, d], dim=1)
        return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]
    if rule.split == "gate_up":
        halves = [shard.chunk(2) for shard in full.chunk(layout.tp)]
        return [torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])]
    if rule.split == "vocab":
        return [full[: shape.vocab_size].contiguous()]
    return [full]


def _split(rule: Rule, full: torch.Tensor, tp: int) -> list[torch.Tensor]:
    if rule.split == "replicated":
        return [full] * tp
    dim = 1 if rule.split == "row" else 0
    return [part.contiguous() for part in full.chunk(tp, dim=dim)]


def _gather(rule: Rule, parts: list[torch.Tensor]) -> torch.Tensor:
    if rule.split == "replicated":
        return parts[0]
    return torch.cat(parts, dim=1 if rule.split == "row" else 0)


def hf_to_megatron(
    hf_state: Mapping[str, torch.Tensor], shape: ModelShape, layout: ParallelLayout
) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Shard a Hugging Face state dict for `layout` (see the module docstring).

    Raises ConversionError naming every missing, left-over or misshapen tensor."""
    expected_shapes = megatron_shapes(shape, layout)
    used: set[str] = set()
    missing: list[str] = []
    shards: dict[tuple[int, int], dict[str, torch.Tensor]] = {key: {} for key in expected_shapes}
    for pp_rank in range(layout.pp):
        first = layout.stage_layers(shape, pp_rank).start
        for rule, layer in _stage_rules(shape, layout, pp_rank):
            hf_names, name = _names(rule, layer, layer - first)
            absent = [n for n in hf_names if n not in hf_state]
            if absent:
                missing.extend(absent)
                continue
            used.update(hf_names)
            full = _fuse(rule, [hf_state[n] for n in hf_names], shape, layout)
            for tp_rank, part in enumerate(_split(rule, full, layout.tp)):
                want = expected_shapes[(pp_rank, tp_rank)][name]
                if tuple(part.shape) != want:
                    raise ConversionError(
                        f"{' + '.join(hf_names)} give {name} of shape {tuple(part.shape)} on "
                        f"tensor rank {tp_rank}, expected {want}: the checkpoint does not match "
                        f"its config.json"
                    )
                shards[(pp_rank, tp_rank)][name] = part
    # A tied checkpoint may carry lm_head.weight (transformers' state_dict does); it must be
    # the embedding itself.
    if shape.tied_embeddings and TIED_HEAD in hf_state:
        if not torch.equal(
            hf_state[TIED_HEAD], hf_state.get(EMBEDDING_RULE.hf[0], hf_state[TIED_HEAD])
        ):
            raise ConversionError(
                "tie_word_embeddings is true but lm_head.weight differs from "
                "model.embed_tokens.weight; fix config.json's tie_word_embeddings"
            )
        used.add(TIED_HEAD)
    left_over = sorted(set(hf_state) - used)
    if missing or left_over:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(set(missing))[:8])}")
        if left_over:
            parts.append(f"not mapped {', '.join(left_over[:8])}")
        raise ConversionError(
            f"the {shape.family} checkpoint does not match the {shape.family} table: "
            + "; ".join(parts)
        )
    return shards


def megatron_to_hf(
    shards: Mapping[tuple[int, int], Mapping[str, torch.Tensor]],
    shape: ModelShape,
    layout: ParallelLayout,
    *,
    tied_head: bool = False,
) -> dict[str, torch.Tensor]:
    """Gather `shards` ({(pp_rank, tp_rank): state dict}) into Hugging Face tensors.

    `tied_head`: also return `lm_head.weight` (a copy of the embedding) for a tied model, as the
    weight transports send it. Raises ConversionError naming missing or left-over tensors."""
    expected_shapes = megatron_shapes(shape, layout)
    if set(shards) != set(expected_shapes):
        raise ConversionError(
            f"shards for (pp_rank, tp_rank) {sorted(shards)} but the layout TP {layout.tp} x "
            f"PP {layout.pp} needs {sorted(expected_shapes)}"
        )
    hf_state: dict[str, torch.Tensor] = {}
    for pp_rank in range(layout.pp):
        first = layout.stage_layers(shape, pp_rank).start
        for tp_rank in range(layout.tp):
            local = shards[(pp_rank, tp_rank)]
            names = expected_shapes[(pp_rank, tp_rank)]
            absent = sorted(set(names) - set(local))
            extra = sorted(n for n in set(local) - set(names) if not n.endswith("_extra_state"))
            if absent or extra:
                raise ConversionError(
                    f"stage {pp_rank}, tensor rank {tp_rank}: "
                    + "; ".join(
                        p
                        for p in [
                            absent and f"missing {', '.join(absent[:8])}",
                            extra and f"not mapped {', '.join(extra[:8])}",
                        ]
                        if p
                    )
                )
        for rule, layer in _stage_rules(shape, layout, pp_rank):
            hf_names, name = _names(rule, layer, layer - first)
            if rule.megatron == OUTPUT_RULE.megatron and rule.hf != OUTPUT_RULE.hf:
                continue  # the last stage's copy of a tied embedding
            parts = [shards[(pp_rank, t)][name] for t in range(layout.tp)]
            for hf_name, tensor in zip(
                hf_names, _unfuse(rule, _gather(rule, parts), shape, layout), strict=True
            ):
                hf_state[hf_name] = tensor
    if shape.tied_embeddings and tied_head:
        hf_state[TIED_HEAD] = hf_state[EMBEDDING_RULE.hf[0]].clone()
    return hf_state
