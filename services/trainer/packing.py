"""Micro-batches for the trainer: sequence packing (no padding waste) and its padded reference.

Packing places whole trajectories into micro-batches of at most `token_budget` tokens by
first-fit decreasing, then concatenates each micro-batch into one row:

    input_ids     [1, T]   the sequences back to back
    position_ids  [1, T]   restart at 0 for every sequence (RoPE sees each one alone)
    cu_seqlens    [S + 1]  sequence boundaries, int32 (FlashAttention's varlen layout)
    seq_index     [1, T]   which sequence of the micro-batch a token belongs to

Attention must not cross sequences. `token_logprobs_and_entropy` gives the model either an
explicit block-diagonal causal mask as a 4D additive float mask (`attention="mask_4d"`, works
with the eager and SDPA kernels on CPU; memory O(T²)), or only the restarting position ids
(`attention="position_ids"`): transformers >= 4.56 (checked on 5.19, Qwen3) then finds the
sequence boundaries itself (`masking_utils.find_packed_sequence_indices`) and builds the same
mask, and FlashAttention-2 on GPU runs varlen without any mask.

The padded layout (`pad_micro_batches`) right-pads fixed-size groups of sequences; it exists to
check packing against and to measure what packing saves (benchmarks/trainer_packing.py).

Every per-token tensor is aligned with `input_ids`: position t of a sequence holds
log π(token_t | tokens before t). The first token of a sequence has no prediction and gets 0,
as do padding positions (it is a prompt token, so the loss mask is 0 there anyway).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F


@dataclass
class MicroBatch:
    """One forward pass worth of sequences, packed ([1, T]) or padded ([B, L])."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq_index: torch.Tensor
    """Index of each token's sequence within this micro-batch; -1 on padding."""
    sample_indices: list[int]
    """Which input sequences, in the order of `seq_index`."""
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-token fields (loss_mask, old_logprobs, advantages...) in the layout of input_ids."""
    cu_seqlens: torch.Tensor | None = None
    """Packed only: cumulative sequence lengths, [num_sequences + 1], int32."""
    attention_mask: torch.Tensor | None = None
    """Padded only: 1 on real tokens, 0 on padding, [B, L]."""

    @property
    def num_real_tokens(self) -> int:
        return int((self.seq_index >= 0).sum())


def first_fit_decreasing(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Bins of sequence indices, each summing to at most `token_budget` tokens.

    Longest first, each into the first bin with room: at most 11/9 OPT + 6/9 bins.
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be > 0, got {token_budget}")
    too_long = [i for i, n in enumerate(lengths) if n > token_budget]
    if too_long:
        raise ValueError(
            f"sequences {too_long[:5]} are longer than token_budget={token_budget} "
            f"(longest {max(lengths)}); raise the budget to at least that"
        )
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        target = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if target is None:
            bins.append([])
            room.append(token_budget)
            target = len(bins) - 1
        bins[target].append(index)
        room[target] -= lengths[index]
    return bins


def _check_per_token(token_ids, per_token) -> None:
    for name, values in per_token.items():
        for index, (ids, row) in enumerate(zip(token_ids, values, strict=True)):
            if len(row) != len(ids):
                raise ValueError(f"{name}[{index}] has {len(row)} values for {len(ids)} tokens")


def pack_micro_batches(
    token_ids: Sequence[Sequence[int]],
    token_budget: int,
    per_token: Mapping[str, Sequence[Sequence[float]]] | None = None,
) -> list[MicroBatch]:
    """Pack sequences into micro-batches of at most `token_budget` tokens, one row each."""
    per_token = dict(per_token or {})
    _check_per_token(token_ids, per_token)
    micro_batches = []
    for members in first_fit_decreasing([len(ids) for ids in token_ids], token_budget):
        lengths = torch.tensor([len(token_ids[i]) for i in members])
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        seq_index = torch.repeat_interleave(torch.arange(len(members)), lengths)
        position_ids = torch.arange(int(lengths.sum())) - cu_seqlens[:-1].long()[seq_index]
        micro_batches.append(
            MicroBatch(
                input_ids=torch.tensor([t for i in members for t in token_ids[i]])[None],
                position_ids=position_ids[None],
                seq_index=seq_index[None],
                sample_indices=list(members),
                per_token={
                    name: torch.tensor(
                        [v for i in members for v in values[i]], dtype=torch.float32
                    )[None]
                    for name, values in per_token.items()
                },
                cu_seqlens=cu_seqlens,
            )
        )
    return micro_batches


def pad_micro_batches(
    token_ids: Sequence[Sequence[int]],
    sequences_per_micro_batch: int,
    per_token: Mapping[str, Sequence[Sequence[float]]] | None = None,
    pad_token_id: int = 0,
) -> list[MicroBatch]:
    """Right-padded micro-batches of `sequences_per_micro_batch` sequences, in input order."""
    per_token = dict(per_token or {})
    _check_per_token(token_ids, per_token)
    micro_batches = []
    for start in range(0, len(token_ids), sequences_per_micro_batch):
        members = list(range(start, min(start + sequences_per_micro_batch, len(token_ids))))
        width = max(len(token_ids[i]) for i in members)
        real = torch.zeros(len(members), width, dtype=torch.bool)
        input_ids = torch.full((len(members), width), pad_token_id, dtype=torch.long)
        fields = {name: torch.zeros(len(members), width) for name in per_token}
        for row, i in enumerate(members):
            n = len(token_ids[i])
            real[row, :n] = True
            input_ids[row, :n] = torch.tensor(token_ids[i])
            for name, values in per_token.items():
                fields[name][row, :n] = torch.tensor(values[i], dtype=torch.float32)
        rows = torch.arange(len(members))[:, None].expand(-1, width)
        micro_batches.append(
            MicroBatch(
                input_ids=input_ids,
                position_ids=torch.arange(width)[None].expand(len(members), -1),
                seq_index=torch.where(real, rows, -1),
                sample_indices=members,
                per_token=fields,
                attention_mask=real.long(),
            )
        )
    return micro_batches


def block_diagonal_causal_mask(cu_seqlens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [1, 1, T, T] mask: 0 where query may attend key (same sequence, key <= query),
    the dtype's minimum elsewhere (a float mask works for both the eager and SDPA kernels)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    positions = torch.arange(seq.numel())
    allowed = (seq[:, None] == seq[None, :]) & (positions[None, :] <= positions[:, None])
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def token_logprobs_and_entropy(
    model: torch.nn.Module,
    micro_batch: MicroBatch,
    temperature: float = 1.0,
    attention: Literal["mask_4d", "position_ids"] = "mask_4d",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the micro-batch's own tokens and the entropy of each prediction.

    Works for a Hugging Face causal LM on a packed or padded micro-batch; both outputs have the
    layout of `input_ids`, with 0 at each sequence's first token and at padding. Logits are
    divided by the sampling `temperature` so the log-probs match what the sampler reported.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = next(model.parameters()).device
    input_ids = micro_batch.input_ids.to(device)
    position_ids = micro_batch.position_ids.to(device)
    if micro_batch.cu_seqlens is not None:  # packed: attention only within each sequence
        if attention == "mask_4d":
            dtype = next(model.parameters()).dtype
            mask = block_diagonal_causal_mask(micro_batch.cu_seqlens, dtype).to(device)
        elif attention == "position_ids":
            mask = None
        else:
            raise ValueError(f"attention must be 'mask_4d' or 'position_ids', got {attention!r}")
    else:
        mask = micro_batch.attention_mask.to(device)
    logits = model(
        input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False
    ).logits
    return logprobs_and_entropy_from_logits(
        logits, input_ids, micro_batch.seq_index.to(device), temperature
    )


def logprobs_and_entropy_from_logits(
    logits: torch.Tensor, input_ids: torch.Tensor, seq_index: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs_and_entropy` from a model's logits [B, T, V] (any backend's model)."""
    # The logit at t predicts token t + 1: shift so index t holds log π(token_t | < t).
    log_probs = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    token_logprobs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    # A prediction is valid only within one sequence (not across a packed boundary or padding).
    valid = (seq_index[:, 1:] == seq_index[:, :-1]) & (seq_index[:, 1:] >= 0)
    token_logprobs = F.pad(torch.where(valid, token_logprobs, 0.0), (1, 0))
    entropy = F.pad(torch.where(valid, entropy, 0.0), (1, 0))
    return token_logprobs, entropy
