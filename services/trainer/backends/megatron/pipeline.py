"""The Megatron backend's pipeline schedule: 1F1B over torch.distributed point-to-point.

    stage 0 ─hidden [T, 1, H]─► stage 1 ─► ... ─► last stage: logits ─► log-probs ─► loss
    stage 0 ◄─grad of hidden─── stage 1 ◄─ ... ◄─ last stage: loss.backward()

One forward, one backward (PipeDream-flush, as megatron's non-interleaved schedule): stage s of
P first runs P - s - 1 forwards (warm-up), then alternates one forward and one backward, then
runs the backwards left (cool-down). A stage therefore holds the activations of at most P - s
micro-batches at a time, whatever the number of micro-batches (an all-forwards-first schedule,
GPipe, holds all of them). The backward of micro-batch i starts on the last stage from its loss
and travels back: each stage backpropagates the gradient of its output and sends the gradient
of its input to the previous stage.

Why our own and not megatron-core's `get_forward_backward_func`: megatron-core 0.16.1's
schedules allocate on "cuda" unconditionally (pipeline_parallel/schedules.py:2138), so they
cannot run on CPU (gloo) nor be tested there; `isend`/`irecv` run on gloo and on NCCL alike.
Where a stage sends to one neighbour and receives from the other in the same step, both are
posted together (`batch_isend_irecv`), so no two stages wait on each other's send.

Invariants a caller relies on:
- Every stage runs the same micro-batches in the same order (the backend gathers them over the
  model-parallel group first), so the shapes of what arrives are known: [T, 1, H] float32 for a
  [1, T] micro-batch. Activations travel in float32 whatever the compute dtype.
- Only the last stage holds log-probs, losses and metrics; `broadcast_from_last` hands them to
  every stage, so each rank returns the same values as at PP 1.
- Not covered: interleaved (virtual) stages, overlapping communication with compute.
"""

from __future__ import annotations

from collections import deque
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


Receive = tuple[tuple[int, ...], int]  # (shape, from rank) of a float32 tensor


def _exchange(
    sends: Sequence[tuple[torch.Tensor, int]], receive: Receive | None, device
) -> torch.Tensor | None:
    """Post every send ((tensor, to rank)) and the receive at once, wait for all; what was
    received (None without a receive)."""
    ops = [dist.P2POp(dist.isend, tensor.contiguous(), peer) for tensor, peer in sends]
    received = None
    if receive is not None:
        shape, peer = receive
        received = torch.empty(shape, dtype=torch.float32, device=device)
        ops.append(dist.P2POp(dist.irecv, received, peer))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return received


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
                received = _exchange([], (hidden_shape(micro_batch), stage.prev_rank), device)
            output = forward(micro_batch, received)
            if stage.is_last:
                results.append(output)
            else:
                _exchange([(output.float(), stage.next_rank)], None, device)
    return results


def forward_backward(
    stage: Stage,
    micro_batches: Sequence[Any],
    forward: StageForward,
    hidden_shape: Callable[[Any], tuple[int, ...]],
    device,
) -> int:
    """1F1B (see the module docstring). On the last stage `forward` returns the micro-batch's
    loss (a scalar) and backward starts from it; gradients accumulate in the stage's
    parameters. Returns the most micro-batches whose activations this stage held at once."""
    count = len(micro_batches)
    warmup = min(stage.size - stage.rank - 1, count)
    pending: deque[tuple[torch.Tensor | None, torch.Tensor]] = deque()  # (input, output)
    peak = 0

    def receive_input(index: int) -> Receive | None:
        if stage.is_first or index >= count:
            return None
        return hidden_shape(micro_batches[index]), stage.prev_rank

    def receive_grad() -> Receive | None:  # of the oldest pending micro-batch's output
        return None if stage.is_last else (tuple(pending[0][1].shape), stage.next_rank)

    def run_forward(index: int, received: torch.Tensor | None) -> list[tuple[torch.Tensor, int]]:
        """The forward of micro-batch `index`; what to send to the next stage."""
        nonlocal peak
        if received is not None:
            received.requires_grad_(True)
        output = forward(micro_batches[index], received)
        if not stage.is_last:
            output = output.float()
        pending.append((received, output))
        peak = max(peak, len(pending))
        return [] if stage.is_last else [(output.detach(), stage.next_rank)]

    def run_backward(grad: torch.Tensor | None) -> list[tuple[torch.Tensor, int]]:
        """The backward of the oldest pending micro-batch; what to send to the previous stage."""
        received, output = pending.popleft()
        if stage.is_last:
            output.backward()
        else:
            torch.autograd.backward(output, grad_tensors=grad)
        if stage.is_first:
            return []
        assert received is not None and received.grad is not None
        return [(received.grad, stage.prev_rank)]

    for index in range(warmup):
        received = _exchange([], receive_input(index), device)
        _exchange(run_forward(index, received), None, device)
    received = _exchange([], receive_input(warmup), device)
    for index in range(warmup, count):  # steady state: one forward, one backward
        grad = _exchange(run_forward(index, received), receive_grad(), device)
        received = _exchange(run_backward(grad), receive_input(index + 1), device)
    while pending:  # cool-down
        grad = _exchange([], receive_grad(), device)
        _exchange(run_backward(grad), None, device)
    return peak


def broadcast_from_last(stage: Stage, value: Any) -> Any:
    """The last stage's `value` (any picklable object; tensors travel on CPU) on every stage."""
    if stage.size == 1:
        return value
    box = [value if stage.is_last else None]
    dist.broadcast_object_list(box, src=stage.last_rank, group=stage.group)
    return box[0]
