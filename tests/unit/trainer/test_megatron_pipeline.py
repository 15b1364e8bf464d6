"""The Megatron backend's pipeline schedule over 4 CPU ranks (gloo): at pipeline parallel 2 x
tensor parallel 2, and at pipeline parallel 2 x data parallel 2, an RL step gives the same
log-probs, loss metrics, grad norm and new weights as one process at PP 1; at PP 2 x TP 2 the
checkpoint state (model and AdamW moments, in Hugging Face naming) is PP 1's, and a checkpoint
written at PP 1 resumes there with the uninterrupted run's next step. A tied embedding (two
copies at PP > 1, the first stage's embedding and the last stage's output layer) takes two
steps at PP 2 x TP 2 equal to PP 1's: the second step reads the updated copy on the last stage.
The schedule is 1F1B: the first of 2 stages holds at most 2 micro-batches' activations at once,
of the step's more than 2 (all-forwards-first would hold them all).

The ranks run this file as a script under torchrun (the `__main__` block); the test compares
what rank 0 wrote with the same steps taken in the test process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from megatron_batches import LEARNING_RATE, one_step


def build(checkpoint: Path, tp: int, pp: int):
    from agentrl.trainer.backends.interface import OptimizerSettings
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import ParallelLayout

    settings = OptimizerSettings(learning_rate=LEARNING_RATE, max_grad_norm=0.1)
    return MegatronBackend(checkpoint, settings, layout=ParallelLayout(tp=tp, pp=pp))


def assert_same_step(step: dict, expected: dict, label: str) -> None:
    """One step of a layout = the same step at PP 1 (log-probs, metrics, grad norm, weights)."""
    assert step["logprobs"] and step["logprobs"].keys() <= expected["logprobs"].keys()
    for samples, logprobs in step["logprobs"].items():
        torch.testing.assert_close(logprobs, expected["logprobs"][samples], atol=2e-5, rtol=1e-5)
    assert step["metrics"].keys() == expected["metrics"].keys()
    for name, value in expected["metrics"].items():
        assert step["metrics"][name] == pytest.approx(value, abs=2e-6), (label, name)
    assert step["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-4), label
    assert set(step["weights"]) == set(expected["weights"])
    for name, tensor in expected["weights"].items():  # 1% of one Adam update (lr)
        torch.testing.assert_close(step["weights"][name], tensor, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def untied_checkpoint(tiny_checkpoint, tmp_path_factory):
    """tiny_checkpoint's tokenizer and shape with an untied output layer (tiny_checkpoint ties
    its embedding)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("untied_checkpoint")
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    Qwen3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(out)
    return out


@pytest.mark.slow  # 4 processes import megatron-core: ~40 s on 2 cores
def test_pipeline_parallel_equals_one_process(
    untied_checkpoint, tiny_checkpoint, tmp_path, run_ranks
):
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    import torch.distributed as dist
    from megatron.core import parallel_state

    # One process at PP 1: a step, its checkpoint state, the next step (uninterrupted); and two
    # steps of the tied model.
    pp1_state = tmp_path / "pp1_state.pt"
    try:
        backend = build(untied_checkpoint, tp=1, pp=1)
        expected = one_step(backend)
        expected_state = backend.state_dict()
        torch.save(expected_state, pp1_state)
        second_step = one_step(backend)["weights"]
        tied = build(tiny_checkpoint, tp=1, pp=1)
        expected_tied = [one_step(tied), one_step(tied)]
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()

    out = tmp_path / "rank0.pt"
    run_ranks(__file__, 4, untied_checkpoint, out, pp1_state, tiny_checkpoint)
    ranks = torch.load(out)
    for layout in ("tp2_pp2", "pp2_dp2"):
        assert_same_step(ranks[layout], expected, layout)
    for number, (step, expected_step) in enumerate(zip(ranks["tied_tp2_pp2"], expected_tied)):
        assert_same_step(step, expected_step, f"tied, step {number + 1}")
    micro_batches, peak = ranks["schedule"]
    assert micro_batches > 2 and peak == 2, ranks["schedule"]  # stage 0 of 2

    # The PP 2 x TP 2 checkpoint state is PP 1's: every shard's weights and moments gathered.
    state = ranks["state"]
    assert state["optimizer"]["adam_step"] == expected_state["optimizer"]["adam_step"] == 1.0
    for part in ("exp_avg", "exp_avg_sq"):
        saved = expected_state["optimizer"][part]
        assert set(state["optimizer"][part]) == set(saved)
        for name, tensor in saved.items():
            torch.testing.assert_close(state["optimizer"][part][name], tensor, atol=1e-7, rtol=1e-4)
    for name, tensor in expected_state["model"].items():
        torch.testing.assert_close(state["model"][name], tensor, atol=1e-4, rtol=0)

    # PP 1's checkpoint resumed at PP 2 x TP 2 takes the uninterrupted run's second step.
    for name, tensor in second_step.items():
        torch.testing.assert_close(ranks["resumed_from_pp1"][name], tensor, atol=1e-4, rtol=0)


if __name__ == "__main__":  # one rank of the test above, under torchrun
    import torch.distributed as dist
    from rank_exit import end_rank

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    checkpoint = Path(sys.argv[1])
    from agentrl.trainer.backends.megatron import pipeline

    peaks, schedule = [], pipeline.forward_backward  # how many micro-batches stage 0 held
    pipeline.forward_backward = lambda *args: peaks.append((len(args[1]), schedule(*args)))
    backend = build(checkpoint, tp=2, pp=2)
    result = {"tp2_pp2": one_step(backend), "schedule": peaks[0]}
    pipeline.forward_backward = schedule
    result["state"] = backend.state_dict()  # collective: every rank
    resumed = build(checkpoint, tp=2, pp=2)
    resumed.load_state_dict(torch.load(sys.argv[3]))
    result["resumed_from_pp1"] = one_step(resumed)["weights"]
    result["pp2_dp2"] = one_step(build(checkpoint, tp=1, pp=2))
    tied = build(Path(sys.argv[4]), tp=2, pp=2)
    result["tied_tp2_pp2"] = [one_step(tied), one_step(tied)]
    if dist.get_rank() == 0:
        torch.save(result, sys.argv[2])
    end_rank()
