"""The 1F1B pipeline schedule (backends/megatron/pipeline.py) on 4 CPU ranks (gloo), one small
linear stage per rank and no megatron-core: every stage's gradients equal those of the same
four stages composed in one process over the same micro-batches, the losses reach every stage,
and stage s of 4 holds at most 4 - s micro-batches' activations at once (of 6).

The ranks run this file as a script under torchrun (the `__main__` block)."""

from __future__ import annotations

import sys

import torch

STAGES, MICRO_BATCHES, WIDTH = 4, 6, 8


def stage_layer(rank: int) -> torch.nn.Linear:
    torch.manual_seed(rank)
    return torch.nn.Linear(WIDTH, WIDTH)


def micro_batch(index: int) -> torch.Tensor:
    """Micro-batch `index`: 2 + index rows (the shapes differ, as packed rows do)."""
    return torch.randn(2 + index, WIDTH, generator=torch.Generator().manual_seed(100 + index))


def loss_of(output: torch.Tensor) -> torch.Tensor:
    return output.tanh().square().mean()


def test_1f1b_gradients_equal_one_process(tmp_path, run_ranks):
    layers = [stage_layer(rank) for rank in range(STAGES)]
    losses = []
    for index in range(MICRO_BATCHES):
        hidden = micro_batch(index)
        for layer in layers:
            hidden = torch.relu(layer(hidden))
        loss = loss_of(hidden)
        loss.backward()
        losses.append(loss.item())

    run_ranks(__file__, STAGES, tmp_path, timeout_s=120)
    for rank, layer in enumerate(layers):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["weight_grad"], layer.weight.grad)
        torch.testing.assert_close(result["bias_grad"], layer.bias.grad)
        assert result["losses"] == [round(x, 6) for x in losses]
        assert result["peak"] == STAGES - rank, (rank, result["peak"])


if __name__ == "__main__":  # one stage of the test above, under torchrun
    import torch.distributed as dist
    from rank_exit import end_rank

    from agentrl.trainer.backends.megatron import pipeline

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    stage = pipeline.Stage(
        rank=rank,
        size=STAGES,
        prev_rank=rank - 1,
        next_rank=rank + 1,
        last_rank=STAGES - 1,
        group=dist.group.WORLD,
    )
    layer = stage_layer(rank)
    losses = []

    def forward(index: int, received: torch.Tensor | None):
        hidden = torch.relu(layer(micro_batch(index) if received is None else received))
        if not stage.is_last:
            return hidden
        loss = loss_of(hidden)
        losses.append(round(loss.item(), 6))
        return loss

    def hidden_shape(index: int) -> tuple[int, ...]:
        return (2 + index, WIDTH)

    peak = pipeline.forward_backward(
        stage, list(range(MICRO_BATCHES)), forward, hidden_shape, torch.device("cpu")
    )
    result = {
        "weight_grad": layer.weight.grad,
        "bias_grad": layer.bias.grad,
        "losses": pipeline.broadcast_from_last(stage, losses),
        "peak": peak,
    }
    torch.save(result, f"{sys.argv[1]}/rank{rank}.pt")
    end_rank()
