"""Data-parallel trainer processes: the process group, which rank does what, what crosses ranks.

    agentrl train --recipe R --nproc-per-node 4     # = torchrun --standalone --nproc-per-node 4
                                                    #   -m agentrl.common.cli train --recipe R

`agentrl train` and `agentrl sft` run data-parallel when torchrun starts them (RANK, WORLD_SIZE,
LOCAL_RANK in the environment) with `trainer.parallelism: fsdp2`, or tensor x data parallel with
`trainer.backend: megatron` (world size a multiple of its tensor x pipeline size; the backend
builds megatron-core's groups over this default group); `--nproc-per-node N`
re-launches the same command under torchrun (`relaunch_under_torchrun`). The entrypoints wrap
their work in `process_group(config.trainer)`, the one place the group is initialised (NCCL
on GPUs, one per LOCAL_RANK; gloo on CPU) and destroyed.

Invariants a reader can rely on:
- One global batch per step, the same as at world size 1: every rank holds the whole step's
  data (the RL loop's rank 0 broadcasts the groups it read; SFT's ranks read the same file in
  the same seeded order), packs the SAME micro-batches, and trains on its share of them
  (`rank_share`: micro-batches r, r + W, r + 2W, ... of the first-fit-decreasing packing),
  padded with empty micro-batches so every rank runs the same number of forward and backward
  passes (FSDP2's collectives must line up).
- Losses are normalised by the GLOBAL counts (`backend.global_counts` all-reduces them) and
  gradients are summed over ranks exactly once (parallelize.py); metrics are summed over ranks.
- Rank 0 alone talks to Redis, the vLLM pool and the run directory (metrics, samples, weight
  exports, checkpoint files, the status servers). Collective verbs (log-probs, training steps,
  gathering weights for a transport or a checkpoint) are called by every rank in the same order.
  Reading is shared: every rank loads the model, SFT data and a checkpoint being resumed.

Not covered: several nodes without a shared run directory (a resumed checkpoint is read by
every rank), elastic restarts (torchrun's `--max-restarts`). Tensor and pipeline groups are the Megatron
backend's (backends/megatron/backend.py), which splits the shares of this module its own way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentrl.trainer.packing import MicroBatch

# Ranks other than 0 wait inside a broadcast while rank 0 waits for a batch of groups (up to the
# loop's wait timeout, 600 s by default) and runs an evaluation; an hour covers both with room.
PROCESS_GROUP_TIMEOUT_S = 3600
# Tokens of the empty micro-batch a rank runs when its share is short (2: one prediction).
EMPTY_MICRO_BATCH_TOKENS = 2


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets the same variables) started us."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 when not launched); usable
    before the process group exists, e.g. to print only once."""
    return int(os.environ.get("RANK", "0"))


def check_world_size(trainer: Any, world_size: int) -> None:
    """Whether `world_size` processes fit the recipe's `trainer` section (a `TrainerConfig`):
    the torch backend's `single` in several processes would train unrelated copies of the
    model; the Megatron backend needs a multiple of tensor x pipeline parallel size."""
    if trainer.backend == "megatron":
        tp = trainer.megatron.tensor_parallel_size
        pp = trainer.megatron.pipeline_parallel_size
        if world_size % (tp * pp):
            raise ValueError(
                f"{world_size} processes were launched but trainer.megatron needs a multiple of "
                f"tensor_parallel_size {tp} x pipeline_parallel_size {pp} = {tp * pp} (the rest "
                "is data parallel): launch a multiple of that (--nproc-per-node) or change "
                "trainer.megatron's sizes"
            )
        return
    if trainer.parallelism == "single" and world_size > 1:
        raise ValueError(
            f"trainer.parallelism is 'single' but {world_size} processes were launched: each "
            "would train its own copy; set trainer.parallelism: fsdp2 (in the recipe, or "
            "AGENTRL__TRAINER__PARALLELISM=fsdp2)"
        )


@contextmanager
def process_group(trainer: Any) -> Iterator[None]:
    """Initialise the default process group when torchrun launched us, destroy it at the end.

    `trainer`: the recipe's `TrainerConfig` (device and parallelism). A no-op in a plain
    process, and when a group already exists (its owner destroys it)."""
    if not launched_by_torchrun():
        yield
        return
    import datetime

    import torch
    import torch.distributed as dist

    from agentrl.trainer.backends.torch.parallelize import resolve_device

    if dist.is_initialized():
        yield
        return
    check_world_size(trainer, int(os.environ["WORLD_SIZE"]))
    cuda = resolve_device(trainer.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
    )
    try:
        yield
        # Every rank at the end before any tears its connections down: a rank destroying the
        # group while a peer still talks to it can abort the peer (gloo: "terminate called
        # without an active exception"). Skipped on an error: the peers may never arrive.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    """Ranks of the default process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0: the process that does the run's I/O (see the module docstring)."""
    return rank() == 0


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects; identity in one process). Every rank
    must call it; the others may pass anything (it is ignored)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def empty_micro_batch(template: MicroBatch) -> MicroBatch:
    """A micro-batch that adds nothing: two padding tokens (`seq_index` -1, so no loss, count
    or metric sees them) with `template`'s per-token fields at 0. Its forward and backward
    still run every FSDP2 collective, which is why a rank with a short share runs it."""
    import torch

    from agentrl.trainer.packing import MicroBatch

    length = EMPTY_MICRO_BATCH_TOKENS
    packed = template.cu_seqlens is not None
    return MicroBatch(
        input_ids=torch.zeros(1, length, dtype=torch.long),
        position_ids=torch.arange(length)[None],
        seq_index=torch.full((1, length), -1, dtype=torch.long),
        sample_indices=[],
        per_token={
            name: torch.zeros(1, length, dtype=value.dtype)
            for name, value in template.per_token.items()
        },
        cu_seqlens=torch.tensor([0, length], dtype=torch.int32) if packed else None,
        attention_mask=None if packed else torch.ones(1, length, dtype=torch.long),
    )


def rank_share(
    micro_batches: Sequence[MicroBatch], rank_index: int | None = None, num_ranks: int | None = None
) -> list[MicroBatch]:
    """This rank's micro-batches of a step: `micro_batches[rank::world_size]`, padded with
    `empty_micro_batch`es to ceil(len / world_size), the same count on every rank. All of them
    at world size 1."""
    rank_index = rank() if rank_index is None else rank_index
    num_ranks = world_size() if num_ranks is None else num_ranks
    if num_ranks == 1:
        return list(micro_batches)
    if not micro_batches:
        raise ValueError("a step needs at least one micro-batch to split over ranks")
    share = list(micro_batches[rank_index::num_ranks])
    per_rank = -(-len(micro_batches) // num_ranks)
    share += [empty_micro_batch(micro_batches[0]) for _ in range(per_rank - len(share))]
    return share


def torchrun_command(nproc_per_node: int, cli_args: Sequence[str]) -> list[str]:
    """The torchrun command that runs `agentrl <cli_args>` in `nproc_per_node` processes on this
    machine (standalone rendezvous: a free local port, no other node)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "agentrl.common.cli",
        *cli_args,
    ]


def relaunch_under_torchrun(nproc_per_node: int, trainer: Any) -> None:
    """Replace this process by torchrun running the same `agentrl` command line; returns only
    when already under torchrun (then the launched count must be `nproc_per_node`).
    `trainer`: the recipe's `TrainerConfig` (`check_world_size`)."""
    if launched_by_torchrun():
        launched = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if launched != nproc_per_node:
            raise ValueError(
                f"--nproc-per-node {nproc_per_node}, but torchrun started "
                f"{launched} processes per node; pass one of the two"
            )
        return
    check_world_size(trainer, nproc_per_node)
    command = torchrun_command(nproc_per_node, sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
