"""The Megatron backend over 4 CPU ranks (gloo): tensor parallel 2 x data parallel 2 gives the
same log-probs, loss, metrics, grad norm and new weights as one process at TP 1; a checkpoint
state written at TP 1 resumes at TP 2 and one written at TP 2 resumes at TP 1, each giving the
uninterrupted run's next step; and the conversion table's names and shapes at TP 2 x PP 2 are
those of megatron-core's GPTModel (tied and untied heads).

The ranks run this file as a script under torchrun (the `__main__` block); the test compares
what rank 0 wrote with the same step taken in the test process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from megatron_batches import LEARNING_RATE, one_step


def real_shapes_at_tp2_pp2() -> dict:
    """{(family, tied): this rank's GPTModel {name: shape}} at TP 2 x PP 2, for 4-layer models
    (under torchrun: the 4 ranks are exactly one model replica)."""
    from megatron.core import parallel_state
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    from agentrl.trainer.backends.megatron.convert import ParallelLayout
    from agentrl.trainer.backends.megatron.model import build_gpt_model, init_parallel

    layout = ParallelLayout(tp=2, pp=2, vocab_multiple=16)
    init_parallel(layout)
    key = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
    )
    shapes = {}
    for family, config_class in [
        ("qwen3", Qwen3Config),
        ("qwen2", Qwen2Config),
        ("llama", LlamaConfig),
    ]:
        for tied in (False, True):
            config = config_class(**SHAPE_CHECK_SIZES, tie_word_embeddings=tied)
            model = build_gpt_model(config, layout)
            shapes[(family, tied)] = {
                name: tuple(t.shape)
                for name, t in model.state_dict().items()
                if not name.endswith("_extra_state")
            }
    return {key: shapes}


SHAPE_CHECK_SIZES = {
    "vocab_size": 203,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
}


def build(checkpoint: Path, tp: int, distributed_optimizer: bool = False):
    from agentrl.trainer.backends.interface import OptimizerSettings
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import ParallelLayout

    settings = OptimizerSettings(learning_rate=LEARNING_RATE, max_grad_norm=0.1)
    return MegatronBackend(
        checkpoint,
        settings,
        layout=ParallelLayout(tp=tp, pp=1),
        distributed_optimizer=distributed_optimizer,
    )


@pytest.mark.slow  # 4 processes import megatron-core: ~30 s on 2 cores
def test_tensor_and_data_parallel_equal_one_process(tiny_checkpoint, tmp_path, run_ranks):
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    import torch.distributed as dist
    from megatron.core import parallel_state

    def release() -> None:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()

    # One process at TP 1: a step, its checkpoint state, the next step (uninterrupted).
    tp1_state = tmp_path / "tp1_state.pt"
    try:
        backend = build(tiny_checkpoint, tp=1)
        expected = one_step(backend)
        torch.save(backend.state_dict(), tp1_state)
        second_step = one_step(backend)["weights"]
    finally:
        release()

    out = tmp_path / "rank0.pt"
    run_ranks(__file__, 4, tiny_checkpoint, out, tp1_state)
    ranks = torch.load(out)
    for samples, logprobs in ranks["logprobs"].items():
        torch.testing.assert_close(logprobs, expected["logprobs"][samples], atol=2e-5, rtol=1e-5)
    for name, value in expected["metrics"].items():
        assert ranks["metrics"][name] == pytest.approx(value, abs=2e-6), name
    assert ranks["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-4)
    assert set(ranks["weights"]) == set(expected["weights"])
    for name, tensor in expected["weights"].items():  # 1% of one Adam update (lr)
        torch.testing.assert_close(ranks["weights"][name], tensor, atol=1e-4, rtol=0)

    # Optimizer state sharded over DP: ranks 0 and 2 (tensor rank 0's replicas) hold disjoint
    # shares of its parameters, together all; the step and the gathered state are the same.
    sharded = ranks["sharded"]
    for tp_rank in range(2):
        first, second = sharded["owned"][tp_rank], sharded["owned"][tp_rank + 2]
        assert first and second and not first & second
        assert first | second == sharded["names"]
    assert sharded["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-4)
    for name, tensor in expected["weights"].items():
        torch.testing.assert_close(sharded["weights"][name], tensor, atol=1e-4, rtol=0)
    plain = ranks["tp2_state"]["optimizer"]
    assert sharded["state"]["optimizer"]["adam_step"] == plain["adam_step"] == 1.0
    for moment in ("exp_avg", "exp_avg_sq"):
        for name, tensor in plain[moment].items():
            torch.testing.assert_close(
                sharded["state"]["optimizer"][moment][name], tensor, atol=1e-7, rtol=1e-5
            )

    # Resharded checkpoints: TP 1 -> TP 2 (4 ranks, DP-sharded optimizer) and TP 2 -> TP 1 (here)
    # take the uninterrupted run's second step (model and AdamW moments resharded).
    try:
        resumed = build(tiny_checkpoint, tp=1)
        resumed.load_state_dict(ranks["tp2_state"])
        assert resumed.step == 1
        from_tp2 = one_step(resumed)["weights"]
    finally:
        release()
    for name, tensor in second_step.items():
        torch.testing.assert_close(ranks["resumed_from_tp1"][name], tensor, atol=1e-4, rtol=0)
        torch.testing.assert_close(from_tp2[name], tensor, atol=1e-4, rtol=0)

    # The conversion table's layout at TP 2 x PP 2 is megatron-core's own, for every family,
    # tied and untied heads.
    from transformers import AutoConfig

    from agentrl.trainer.backends.megatron.convert import (
        ModelShape,
        ParallelLayout,
        megatron_shapes,
    )

    real = ranks["real_shapes"]
    assert set(real) == {(p, t) for p in range(2) for t in range(2)}
    for family in ("qwen3", "qwen2", "llama"):
        for tied in (False, True):
            config = AutoConfig.for_model(family, **SHAPE_CHECK_SIZES, tie_word_embeddings=tied)
            table = megatron_shapes(ModelShape.from_hf(config), ParallelLayout(2, 2, 16))
            for key, names in table.items():
                assert real[key][(family, tied)] == names, (family, tied, key)


if __name__ == "__main__":  # one rank of the test above, under torchrun
    import torch.distributed as dist
    from rank_exit import end_rank

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    backend = build(Path(sys.argv[1]), tp=2)
    result = one_step(backend)
    result["tp2_state"] = backend.state_dict()  # collective: every rank
    # Resumed at TP 2 into a DP-sharded optimizer: each rank takes its share of the moments.
    resumed = build(Path(sys.argv[1]), tp=2, distributed_optimizer=True)
    resumed.load_state_dict(torch.load(sys.argv[3]))
    result["resumed_from_tp1"] = one_step(resumed)["weights"]
    # AdamW's state sharded over the 2 data-parallel ranks: the same step, half the state.
    sharded = build(Path(sys.argv[1]), tp=2, distributed_optimizer=True)
    result["sharded"] = one_step(sharded)
    owned = [None] * dist.get_world_size()
    mine = {name for name, p in sharded.model.named_parameters() if p in sharded._adamw().state}
    dist.all_gather_object(owned, mine)
    result["sharded"]["owned"] = owned
    result["sharded"]["names"] = {name for name, _ in sharded.model.named_parameters()}
    result["sharded"]["state"] = sharded.state_dict()
    shapes = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, real_shapes_at_tp2_pp2())
    result["real_shapes"] = {key: value for part in shapes for key, value in part.items()}
    if dist.get_rank() == 0:
        torch.save(result, sys.argv[2])
    end_rank()
