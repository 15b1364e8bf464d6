"""The Megatron backend's pipeline schedule: GPipe over torch.distributed point-to-point.

    stage 0 ─hidden [T, 1, H]─► stage 1 ─► ... ─► last stage: logits ─► log-probs ─► loss
    stage 0 ◄─grad of hidden─── stage 1 ◄─ ... ◄─ last stage: loss.backward()

Every micro-batch goes forward through all stages first (each stage keeps its input and output
of every micro-batch), then backward in reverse order: the last stage backpropagates its loss,
sends the gradient of its input to the previous stage, which backpropagates that gradient
through its own output, and so on. Activations of all micro-batches of a step stay in memory
until their backward (GPipe; 1F1B would hold at most PP of them).

Why our own and not megatron-core's `get_forward_backward_func`: megatron-core 0.16.1's
schedules allocate on "cuda" unconditionally (pipeline_parallel/schedules.py:2138), so they
cannot run on CPU (gloo) nor be tested there; `send`/`recv` run on gloo and on NCCL alike.

Invariants a caller relies on:
- Every stage runs the same micro-batches in the same order (the backend gathers them over the
  model-parallel group first), so the shapes of what arrives are known: [T, 1, H] float32 for a
  [1, T] micro-batch. Activations travel in float32 whatever the compute dtype.
- Only the last stage holds log-probs, losses and metrics; `broadcast_from_last` hands them to
  every stage, so each rank returns the same values as at PP 1.
- Not covered: interleaved (virtual) stages, overlapping communication with compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# The forward of one micro-batch on this stage: (micro-batch, input from the previous stage or
# None on the first stage) -> hidden states for the next stage, or on the last stage whatever
# the caller computes from the logits (a loss, log-probs).
StageForward = Callable[[Any, torch.Tensor | None], Any]


@dataclass(frozen=True)
class Stage:
    """Where this rank sits in its pipeline (global ranks of its neighbours)."""

    rank: int
    size: int
    prev_rank: int
    next_rank: int
    last_rank: int  # the global rank of the last stage of this pipeline
    group: Any

    @classmethod
    def current(cls) -> Stage:
        from megatron.core import parallel_state

        ranks = dist.get_process_group_ranks(parallel_state.get_pipeline_model_parallel_group())
        return cls(
            rank=parallel_state.get_pipeline_model_parallel_rank(),
            size=len(ranks),
            prev_rank=parallel_state.get_pipeline_model_parallel_prev_rank(),
            next_rank=parallel_state.get_pipeline_model_parallel_next_rank(),
            last_rank=ranks[-1],
            group=parallel_state.get_pipeline_model_parallel_group(),
        )

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1


def _receive(stage: Stage, shape: tuple[int, ...], device, source: int) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=torch.float32, device=device)
    dist.recv(tensor, src=source)
    return tensor


def forward_only(
    stage: Stage,
    micro_batches: Sequence[Any],
    forward: StageForward,
    hidden_shape: Callable[[Any], tuple[int, ...]],
    device,
) -> list[Any]:
    """Each micro-batch through every stage (no autograd); the last stage's results, in order
    (an empty list on the other stages)."""
    results = []
    with torch.no_grad():
        for micro_batch in micro_batches:
            received = None
            if not stage.is_first:
                received = _receive(stage, hidden_shape(micro_batch), device, stage.prev_rank)
            output = forward(micro_batch, received)
            if stage.is_last:
                results.append(output)
            else:
                dist.send(output.float().contiguous(), dst=stage.next_rank)
    return results


def forward_backward(
    stage: Stage,
    micro_batches: Sequence[Any],
    forward: StageForward,
    hidden_shape: Callable[[Any], tuple[int, ...]],
    device,
) -> None:
    """GPipe: all forwards, then all backwards in reverse. On the last stage `forward` returns
    the micro-batch's loss (a scalar) and backward starts from it; gradients accumulate in the
    stage's parameters."""
    inputs: list[torch.Tensor | None] = []
    outputs: list[torch.Tensor] = []
    for micro_batch in micro_batches:
        received = None
        if not stage.is_first:
            received = _receive(stage, hidden_shape(micro_batch), device, stage.prev_rank)
            received.requires_grad_(True)
        output = forward(micro_batch, received)
        if not stage.is_last:
            output = output.float()
            dist.send(output.detach().contiguous(), dst=stage.next_rank)
        inputs.append(received)
        outputs.append(output)
    for received, output in zip(reversed(inputs), reversed(outputs), strict=True):
        if stage.is_last:
            output.backward()
        else:
            grad = _receive(stage, tuple(output.shape), device, stage.next_rank)
            torch.autograd.backward(output, grad_tensors=grad)
        if not stage.is_first:
            assert received is not None and received.grad is not None
            dist.send(received.grad.contiguous(), dst=stage.prev_rank)


def broadcast_from_last(stage: Stage, value: Any) -> Any:
    """The last stage's `value` (any picklable object; tensors travel on CPU) on every stage."""
    if stage.size == 1:
        return value
    box = [value if stage.is_last else None]
    dist.broadcast_object_list(box, src=stage.last_rank, group=stage.group)
    return box[0]
