"""The data-parallel split without processes: each rank's share of a step's micro-batches, the
empty micro-batch that pads a short share (it must add nothing to loss, counts, metrics or
gradient), and the launcher's checks. Real ranks: tests/integration/test_fsdp2.py."""

from __future__ import annotations

import sys

import pytest
import torch

from agentrl.common.config import AlgorithmConfig
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.distributed import (
    check_world_size,
    empty_micro_batch,
    rank_share,
    relaunch_under_torchrun,
    torchrun_command,
)
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn
from agentrl.trainer.packing import pack_micro_batches

LENGTHS = [12, 30, 7, 21, 16, 9, 25]


def micro_batches(budget: int = 30):
    token_ids = [list(range(3, 3 + n)) for n in LENGTHS]
    per_token = {
        "loss_mask": [[0.0] * 2 + [1.0] * (n - 2) for n in LENGTHS],
        "advantages": [[0.5] * n for n in LENGTHS],
        "old_logprobs": [[-5.0] * n for n in LENGTHS],
    }
    return pack_micro_batches(token_ids, budget, per_token)


def counts_of(batches) -> GlobalTokenCounts:
    return sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in batches),
        GlobalTokenCounts(0, 0, 0),
    )


def test_ranks_take_disjoint_round_robin_shares_of_equal_length() -> None:
    batches = micro_batches()
    assert len(batches) == 5
    shares = [rank_share(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shares] == [2, 2, 2]  # 5 over 3 ranks: rank 2 pads one
    assert shares[0] == [batches[0], batches[3]] and shares[1] == [batches[1], batches[4]]
    assert shares[2][0] is batches[2] and shares[2][1].sample_indices == []
    # Together the shares are the whole global batch, once: the counts add up to it.
    assert sum((counts_of(s) for s in shares), GlobalTokenCounts(0, 0, 0)) == counts_of(batches)
    assert rank_share(batches, 0, 1) == batches
    assert len(rank_share(batches[:1], 3, 4)) == 1  # more ranks than micro-batches


def test_an_empty_micro_batch_adds_no_loss_metric_or_gradient(tiny_checkpoint) -> None:
    from agentrl.trainer.backends.torch.backend import TorchBackend

    backend = TorchBackend(tiny_checkpoint, OptimizerSettings(learning_rate=1e-3), device="cpu")
    template = micro_batches()[0]
    empty = empty_micro_batch(template)
    assert empty.per_token.keys() == template.per_token.keys()
    assert counts_of([empty]) == GlobalTokenCounts(0, 0, 0)
    for algorithm in (
        AlgorithmConfig(),
        AlgorithmConfig(loss_agg="seq-mean-token-mean", gspo=True),
    ):
        metrics = backend.forward_backward(
            [empty], policy_loss_fn(algorithm, counts_of(micro_batches()))
        )
        assert all(value == 0.0 for value in metrics.values()), metrics
        # The backward ran through every parameter (FSDP2's reduce-scatters fire) with zeros.
        grads = [p.grad for p in backend.model.parameters()]
        assert all(g is not None and not g.any() for g in grads)
        backend.optimizer.zero_grad(set_to_none=True)
    ((logprobs, entropy),) = backend.logprobs([empty])
    assert not logprobs.any() and not entropy.any()


def test_single_in_several_processes_is_refused_with_the_fix() -> None:
    from agentrl.common.config import TrainerConfig

    check_world_size(TrainerConfig(), 1)
    check_world_size(TrainerConfig(parallelism="fsdp2"), 4)
    with pytest.raises(ValueError, match="set trainer.parallelism: fsdp2"):
        check_world_size(TrainerConfig(), 2)


def test_megatron_world_size_must_divide_by_tensor_times_pipeline() -> None:
    from agentrl.common.config import TrainerConfig

    megatron = TrainerConfig(backend="megatron", megatron={"tensor_parallel_size": 2})
    check_world_size(megatron, 2)
    check_world_size(megatron, 4)  # TP 2 x DP 2
    with pytest.raises(ValueError, match="needs a multiple of tensor_parallel_size 2") as error:
        check_world_size(megatron, 3)
    assert "--nproc-per-node" in str(error.value)


def test_relaunch_runs_the_same_command_under_torchrun(monkeypatch) -> None:
    from agentrl.common.config import TrainerConfig

    command = torchrun_command(4, ["sft", "--recipe", "r.yaml", "--nproc-per-node", "4"])
    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
        "agentrl.common.cli",
        "sft",
        "--recipe",
        "r.yaml",
        "--nproc-per-node",
        "4",
    ]
    # Inside torchrun the same option is checked against what torchrun started, not re-run.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    fsdp2 = TrainerConfig(parallelism="fsdp2")
    relaunch_under_torchrun(4, fsdp2)
    with pytest.raises(ValueError, match="--nproc-per-node 2, but torchrun started 4"):
        relaunch_under_torchrun(2, fsdp2)


def test_rank_share_needs_micro_batches() -> None:
    with pytest.raises(ValueError, match="at least one micro-batch"):
        rank_share([], 0, 2)
    assert torch.equal(empty_micro_batch(micro_batches()[0]).seq_index, torch.full((1, 2), -1))
