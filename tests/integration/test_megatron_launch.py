"""Multi-process Megatron runs through the launcher (CPU, gloo):

- `agentrl sft --nproc-per-node 2` with `trainer.backend: megatron` (tensor parallel 2): the CLI
  re-launches itself under torchrun, megatron-core's groups are built over the launcher's
  process group, and the run equals one process at TP 1 (losses, grad norms, the written
  checkpoint). A count that does not divide by TP x PP is refused before anything starts.
- the RL loop (`run_training`, what `agentrl train` runs on every rank) on 2 ranks at TP 2 for
  two steps, then resumed by ONE process at TP 1 for the third, equals one process at TP 1
  throughout (metrics of every step, the last weights sent). The stand-in rollout worker and
  vLLM pool are loop_helpers.py's (deterministic groups from the data position); what is real is
  the loop on every rank, Redis, torch.distributed and megatron-core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from loop_helpers import (
    AGENTRL,
    launch,
    release_megatron,
    run_with_stand_ins,
    stand_in_loop_config,
    torchrun,
    write_prompts,
    write_trajectories,  # the same SFT data as the FSDP2 runs
)

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

RTOL = 1e-4
LEARNING_RATE = 1e-3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agentrl.common.models import default_corpus, init_tiny_model

    # 4 heads, 2 key/value heads, MLP 384: divisible by TP 2.
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(300), seed=4)


def write_recipe(tmp_path: Path, model_dir: Path, tp: int) -> Path:
    data = write_trajectories(tmp_path / "sft.jsonl", count=8)
    recipe = tmp_path / "recipe.yaml"
    # 4 trajectories of ~40-70 tokens per step in micro-batches of 128: 2-3 micro-batches.
    recipe.write_text(
        f"run: {{output_dir: {tmp_path / 'run'}, seed: 3}}\n"
        f"model: {{path: {model_dir}}}\n"
        "trainer: {device: cpu, backend: megatron, cpu_threads: 1, "
        f"megatron: {{tensor_parallel_size: {tp}, vocab_padding_multiple: 16}}}}\n"
        f"sft: {{train_path: {data}, batch_size: 4, max_steps: 2, learning_rate: 0.001, "
        "micro_batch_tokens: 128, max_length_tokens: 128}\n"
    )
    return recipe


def sft_cli(recipe: Path, nproc: int, timeout_s: float):
    return launch(
        [*AGENTRL, "sft", "--recipe", str(recipe)]
        + ["--nproc-per-node", str(nproc), "--log-every", "1"],
        timeout_s,
        check=False,
    )


@pytest.mark.slow  # 2 processes import megatron-core and train 2 steps: ~30-40 s on 2 cores
def test_sft_on_two_tensor_parallel_ranks_through_the_cli_equals_one_process(
    model_dir, tmp_path
) -> None:
    from safetensors.torch import load_file

    from agentrl.common.config import load_config
    from agentrl.trainer.sft import run_sft

    recipe = write_recipe(tmp_path, model_dir, tp=2)
    result = sft_cli(recipe, 2, timeout_s=300)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.stdout.count("SFT done: 2 steps on 8 trajectories") == 1, result.stdout
    assert result.stdout.count("step     1  loss") == 1  # rank 0 alone prints
    two_ranks = tmp_path / "run" / "sft"
    records = [
        json.loads(line) for line in (two_ranks / "sft_metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2]

    config = load_config(recipe)
    megatron = config.trainer.megatron.model_copy(update={"tensor_parallel_size": 1})
    config = config.model_copy(
        update={"trainer": config.trainer.model_copy(update={"megatron": megatron})}
    )
    threads = torch.get_num_threads()
    try:
        one_rank = run_sft(config, output_dir=tmp_path / "one_rank")
    finally:
        torch.set_num_threads(threads)
        release_megatron()
    expected = [
        json.loads(line)
        for line in (tmp_path / "one_rank" / "sft_metrics.jsonl").read_text().splitlines()
    ]
    for record, loss, reference in zip(records, one_rank.losses, expected, strict=True):
        assert record["loss"] == pytest.approx(loss, rel=RTOL)
        assert record["grad_norm"] == pytest.approx(reference["grad_norm"], rel=RTOL)
        assert record["num_tokens"] == reference["num_tokens"]
    one, two = (
        load_file(tmp_path / "one_rank" / "model.safetensors"),
        load_file(two_ranks / "model.safetensors"),
    )
    assert one.keys() == two.keys()
    for name, tensor in one.items():  # 10% of one Adam update (lr 1e-3)
        torch.testing.assert_close(two[name], tensor, atol=1e-4, rtol=0, msg=name)


def test_a_process_count_that_does_not_divide_by_tp_is_refused(model_dir, tmp_path) -> None:
    result = sft_cli(write_recipe(tmp_path, model_dir, tp=2), 3, timeout_s=120)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "3 processes were launched but trainer.megatron needs a multiple of" in message
    assert "tensor_parallel_size 2 x pipeline_parallel_size 1 = 2" in message
    assert "Traceback" not in result.stderr


# ---- the RL loop on 2 tensor-parallel ranks ----------------------------------------------------


def rl_loop(model_dir: Path, data: Path, run_dir: Path, redis_url: str, tp: int, steps: int):
    """`run_training` to `steps` (resuming from `run_dir`) at TP `tp`; the stand-ins run on
    rank 0. Under torchrun every rank calls it."""
    from agentrl.trainer.distributed import process_group

    megatron = {"tensor_parallel_size": tp, "vocab_padding_multiple": 16}
    trainer = {"backend": "megatron", "megatron": megatron}
    config = stand_in_loop_config(model_dir, data, run_dir, redis_url, trainer, LEARNING_RATE)
    with process_group(config.trainer):
        run_with_stand_ins(config, redis_url, steps)


def in_process(*args) -> None:
    """`rl_loop` in this process (one rank), then megatron-core's groups released."""
    threads = torch.get_num_threads()
    try:
        rl_loop(*args)
    finally:
        torch.set_num_threads(threads)
        release_megatron()


@pytest.mark.slow  # ~60-90 s on 2 cores: 3 + 1 in-process steps, 2 ranks under torchrun
def test_the_rl_loop_on_two_tp_ranks_resumes_at_tp_1_and_equals_one_process(
    model_dir, redis_url, tmp_path
) -> None:
    from safetensors.torch import load_file

    from agentrl.trainer.metrics import read_step_metrics

    data = write_prompts(tmp_path / "prompts.jsonl")
    one, two = tmp_path / "one-rank", tmp_path / "two-ranks"
    in_process(model_dir, data, one, redis_url, 1, 3)
    launch(torchrun(__file__, 2, model_dir, data, two, redis_url, 2, 2), timeout_s=300)
    in_process(model_dir, data, two, redis_url, 1, 3)  # resumes the TP 2 checkpoint at TP 1

    expected, records = read_step_metrics(one), read_step_metrics(two)
    assert [r["step"] for r in records] == [1, 2, 3]  # rank 0 alone writes
    for record, reference in zip(records, expected, strict=True):
        for name in ("reward_mean", "num_loss_tokens", "num_micro_batches", "policy_version"):
            assert record[name] == reference[name], name
        for name in ("loss", "pg_loss", "entropy", "approx_kl", "grad_norm"):
            assert record[name] == pytest.approx(reference[name], rel=RTOL, abs=1e-6), name
    assert [p.name for p in sorted((two / "checkpoints").iterdir())] == [
        "step_00000002",
        "step_00000003",
    ]
    written = {
        step: torch.load(two / "checkpoints" / f"step_0000000{step}" / "backend.pt")["layout"]
        for step in (2, 3)
    }
    # Written by the 2 ranks, then by 1 (one pipeline stage both times).
    assert written == {2: {"tp": 2, "pp": 1}, 3: {"tp": 1, "pp": 1}}
    weights = "weights/v00000003/model.safetensors"  # the last version the pool was sent
    sent, reference = load_file(two / weights), load_file(one / weights)
    assert sent.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(sent[name], tensor, atol=1e-4, rtol=0, msg=name)


if __name__ == "__main__":  # each rank of the torchrun launch above
    *paths, url, tp, steps = sys.argv[1:]
    rl_loop(*map(Path, paths), url, int(tp), int(steps))
