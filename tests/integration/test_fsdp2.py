"""FSDP2 data parallelism for real: two ranks under torchrun, gloo on CPU, against world size 1.

Launches of this file under torchrun (`python -m torch.distributed.run --standalone
--nproc-per-node 2`, `trainer.parallelism: fsdp2` on every rank) run the scenarios below; the
same functions run at world size 1 (`single`) in the test process. Shown, in float32 (reduction
order allows ~1e-5 relative):
- one RL step (`rl_step.train_step` on scored Groups packed into 5 micro-batches, so one rank
  also runs an empty one) gives world size 1's gradient, grad norm, loss metrics and updated
  weights, for the default objective, for decoupled PPO with seq-mean-token-mean, and with the
  KL penalty to the reference policy (reference.py, sharded like the policy);
- a checkpoint written at world size 2 resumes at world size 1 and one written at world size 1
  resumes at world size 2, the next step giving the weights of an uninterrupted run;
- the RL loop (`run_training`, real Redis, stand-ins for rollout workers and vLLM) on two ranks,
  stopped after 2 steps and resumed, logs world size 1's metrics once and exports its weights;
- `agentrl sft --nproc-per-node 2` (the CLI re-launching itself under torchrun) trains, prints
  its steps once, and writes the checkpoint `run_sft` writes at world size 1.

The grad norm is the check that sees a gradient scaled by the world size: Adam's first update is
nearly scale-free, so equal weights alone would not.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from loop_helpers import (
    AGENTRL,
    launch,
    run_with_stand_ins,
    stand_in_loop_config,
    torchrun,
    write_prompts,
    write_trajectories,
)

from agentrl.common.config import AgentRLConfig, AlgorithmConfig, ModelConfig, TrainerConfig
from agentrl.trainer.backends import create_backend
from agentrl.trainer.checkpoint import CheckpointManager, TrainingState
from agentrl.trainer.distributed import (
    is_main_process,
    process_group,
    rank_share,
    world_size,
)
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn
from agentrl.trainer.reference import ReferencePolicy
from agentrl.trainer.rl_step import train_step
from agentrl.trainer.train_batch import build_train_batch

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
MICRO_BATCH_TOKENS = 52  # the groups below pack into 5 micro-batches: 3 on rank 0, 2 + 1 empty
PROMPT_LENGTH = 5
LEARNING_RATE = 1e-3
RTOL, ATOL = 1e-5, 1e-6  # float32 sums taken in another order (measured: ~2e-7 apart)
ALGORITHMS = {
    "default": AlgorithmConfig(learning_rate=LEARNING_RATE),
    "decoupled_seq_mean": AlgorithmConfig(
        learning_rate=LEARNING_RATE, decoupled_ppo=True, loss_agg="seq-mean-token-mean"
    ),
    # The reference policy (a second FSDP2-sharded copy of the initial weights, its forward
    # collective): k1's gradient is ∇log π even where π = π_ref, so the penalty moves the step.
    "kl_k1": AlgorithmConfig(learning_rate=LEARNING_RATE, kl_coef=0.5, kl_estimator="k1"),
}


# ---- what every rank runs (and the test process, at world size 1) ----------------------------


def make_groups(seed: int) -> list:
    """Three scored groups of four samples with mixed rewards, different lengths, and behaviour
    log-probs near a random model's (about -log 1024), so some ratios clip and some do not."""
    from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2

    generator = torch.Generator().manual_seed(seed)
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]]
    groups = []
    for g, group_rewards in enumerate(rewards):
        samples = []
        for i, reward in enumerate(group_rewards):
            length = PROMPT_LENGTH + 6 + 4 * i + 3 * g
            response = length - PROMPT_LENGTH
            behaviour = (-6.9 + 0.3 * torch.randn(response, generator=generator)).tolist()
            samples.append(
                group_pb2.ScoredTrajectory(
                    trajectory=trajectory_pb2.Trajectory(
                        trajectory_id=f"g{g}-{i}",
                        sample_index=i,
                        prompt_length=PROMPT_LENGTH,
                        token_ids=torch.randint(3, 300, (length,), generator=generator).tolist(),
                        loss_mask=[0] * PROMPT_LENGTH + [1] * response,
                        behaviour_logprobs=[0.0] * PROMPT_LENGTH + behaviour,
                        policy_versions=[-1] * PROMPT_LENGTH + [0] * response,
                    ),
                    result=group_pb2.RewardResult(reward=reward),
                )
            )
        groups.append(
            group_pb2.Group(
                group_id=f"g{g}", task=task_pb2.RolloutTask(task_id=f"g{g}"), samples=samples
            )
        )
    return groups


def make_backend(model_dir: Path, parallelism: str):
    return create_backend(make_config(model_dir, parallelism, ALGORITHMS["default"]))


def make_config(model_dir: Path, parallelism: str, algorithm: AlgorithmConfig) -> AgentRLConfig:
    return AgentRLConfig(
        model=ModelConfig(path=model_dir),
        trainer=TrainerConfig(device="cpu", parallelism=parallelism, cpu_threads=1),
        algorithm=algorithm,
    )


def full_gradients(backend) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient (gathering a DTensor is collective: all ranks call)."""
    return {
        name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for name, p in backend.model.named_parameters()
    }


def step(backend, seed: int, algorithm: AlgorithmConfig):
    batch = build_train_batch(make_groups(seed), 0, algorithm, max_staleness=4)
    return train_step(backend, batch, algorithm, MICRO_BATCH_TOKENS)


def rl_step_scenario(model_dir: Path, parallelism: str, algorithm: AlgorithmConfig) -> dict:
    """The gradient of one step through `forward_backward`, then the step through rl_step."""
    backend = make_backend(model_dir, parallelism)
    reference = ReferencePolicy.for_run(make_config(model_dir, parallelism, algorithm))
    batch = build_train_batch(make_groups(0), 0, algorithm, max_staleness=4)
    micro_batches = rank_share(batch.micro_batches(MICRO_BATCH_TOKENS))
    if reference is not None:
        reference.annotate(micro_batches)
    counts = backend.global_counts(
        sum(
            (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
            GlobalTokenCounts(0, 0, 0),
        )
    )
    backend.forward_backward(micro_batches, policy_loss_fn(algorithm, counts))
    gradients = full_gradients(backend)
    backend.optimizer.zero_grad(set_to_none=True)
    outcome = train_step(backend, batch, algorithm, MICRO_BATCH_TOKENS, reference)
    return {
        "gradients": gradients,
        "loss_metrics": outcome.loss_metrics,
        "grad_norm": outcome.stats.grad_norm,
        "counts": outcome.counts,
        "num_micro_batches": outcome.num_micro_batches,
        "num_local_micro_batches": len(micro_batches),
        "time_training_s": outcome.time_training_s,
        "weights": backend.hf_weights(),
    }


def write_checkpoint(model_dir: Path, parallelism: str, root: Path) -> None:
    """Step 1 on batch 0, then a checkpoint under `root`."""
    backend = make_backend(model_dir, parallelism)
    step(backend, 0, ALGORITHMS["default"])
    CheckpointManager(root).save(backend, TrainingState(step=1, policy_version=1))


def resume_checkpoint(model_dir: Path, parallelism: str, root: Path) -> dict[str, torch.Tensor]:
    """Restore the checkpoint under `root`, step 2 on batch 1: the weights after it."""
    backend = make_backend(model_dir, parallelism)
    state = CheckpointManager(root).load(backend)
    assert (state.step, backend.step) == (1, 1)
    step(backend, 1, ALGORITHMS["default"])
    return backend.hf_weights()


def uninterrupted(model_dir: Path) -> dict[str, torch.Tensor]:
    backend = make_backend(model_dir, "single")
    step(backend, 0, ALGORITHMS["default"])
    step(backend, 1, ALGORITHMS["default"])
    return backend.hf_weights()


def backend_scenarios(model_dir: Path, out_dir: Path, checkpoint_from_one_rank: Path) -> None:
    """The RL steps and checkpoints on every rank; rank 0 saves what the tests compare."""
    results: dict = {"world_size": world_size()}
    for name, algorithm in ALGORITHMS.items():
        results[name] = rl_step_scenario(model_dir, "fsdp2", algorithm)
    write_checkpoint(model_dir, "fsdp2", out_dir / "checkpoints")
    results["resumed"] = resume_checkpoint(model_dir, "fsdp2", checkpoint_from_one_rank)
    if is_main_process():
        torch.save(results, out_dir / "results.pt")


def rl_loop_scenario(
    model_dir: Path, data: Path, run_dir: Path, redis_url: str, parallelism: str, max_steps: int
) -> None:
    """`run_training` to `max_steps` (resuming from `run_dir`), the stand-ins on rank 0."""
    config = stand_in_loop_config(
        model_dir, data, run_dir, redis_url, {"parallelism": parallelism}, LEARNING_RATE
    )
    run_with_stand_ins(config, redis_url, max_steps)


def main(scenario: str, *args: str) -> None:
    """Each rank of a torchrun launch of this file."""
    torch.set_num_threads(1)
    with process_group(TrainerConfig(device="cpu", parallelism="fsdp2")):
        if scenario == "backend":
            backend_scenarios(*map(Path, args))
        else:
            *paths, redis_url, max_steps = args
            rl_loop_scenario(*map(Path, paths), redis_url, "fsdp2", int(max_steps))


# ---- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agentrl.common.models import default_corpus, init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(300), seed=4)


@pytest.fixture(scope="module")
def one_thread():
    """The world-size-1 runs here use one thread like each rank (and give the rest back)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun_this_file(*args) -> list[str]:
    return torchrun(__file__, WORLD_SIZE, *args)


@pytest.fixture(scope="module")
def runs(model_dir, one_thread, tmp_path_factory):
    """World size 1 in this process, world size 2 under torchrun, then the cross resume."""
    out = tmp_path_factory.mktemp("fsdp2")
    one = {
        name: rl_step_scenario(model_dir, "single", algorithm)
        for name, algorithm in ALGORITHMS.items()
    }
    write_checkpoint(model_dir, "single", out / "checkpoints_one_rank")
    one["uninterrupted"] = uninterrupted(model_dir)
    started = time.perf_counter()
    launch(torchrun_this_file("backend", model_dir, out, out / "checkpoints_one_rank"))
    print(f"torchrun launch of {WORLD_SIZE} ranks: {time.perf_counter() - started:.1f} s")
    two = torch.load(out / "results.pt", weights_only=False)
    one["resumed_from_two_ranks"] = resume_checkpoint(model_dir, "single", out / "checkpoints")
    return one, two


def assert_same_tensors(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        torch.testing.assert_close(
            actual[name], value, rtol=RTOL, atol=ATOL, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_an_rl_step_on_two_ranks_equals_one_rank(runs, algorithm) -> None:
    one, two = runs[0][algorithm], runs[1][algorithm]
    assert runs[1]["world_size"] == WORLD_SIZE
    assert one["num_micro_batches"] == two["num_micro_batches"] == 5
    assert two["num_local_micro_batches"] == 3  # rank 0's share; rank 1 pads with an empty one
    assert one["counts"] == two["counts"]  # the global counts, all-reduced
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=RTOL)  # summed exactly once
    assert one["grad_norm"] > 0
    assert one["loss_metrics"].keys() == two["loss_metrics"].keys()
    for name, value in one["loss_metrics"].items():  # summed over micro-batches and ranks
        assert two["loss_metrics"][name] == pytest.approx(value, rel=RTOL, abs=ATOL), name
    assert one["loss_metrics"]["entropy"] > 0
    if algorithm == "kl_k1":  # each rank's reference log-probs line up with its tokens
        assert {"kl_k1", "kl_k2", "kl_k3"} <= two["loss_metrics"].keys()
        assert two["loss_metrics"]["kl_k1"] == pytest.approx(0.0, abs=1e-6)
    assert_same_tensors(one["gradients"], two["gradients"])
    assert_same_tensors(one["weights"], two["weights"])
    print(
        f"{algorithm}: step {one['time_training_s']:.3f} s on 1 rank, "
        f"{two['time_training_s']:.3f} s on {WORLD_SIZE}"
    )


def test_checkpoints_resume_across_world_sizes(runs) -> None:
    one, two = runs
    assert_same_tensors(one["uninterrupted"], one["resumed_from_two_ranks"])
    assert_same_tensors(one["uninterrupted"], two["resumed"])


# ---- the CLI -----------------------------------------------------------------------------------


def test_sft_with_nproc_per_node_trains_data_parallel_and_matches_one_rank(
    model_dir, one_thread, tmp_path
) -> None:
    from safetensors.torch import load_file

    from agentrl.common.config import load_config
    from agentrl.trainer.sft import run_sft

    data = write_trajectories(tmp_path / "sft.jsonl", count=12)
    recipe = tmp_path / "recipe.yaml"
    # 6 trajectories of ~40-70 tokens per step in micro-batches of 128: 3 micro-batches.
    recipe.write_text(
        f"run: {{output_dir: {tmp_path / 'run'}, seed: 3}}\n"
        f"model: {{path: {model_dir}}}\n"
        "trainer: {device: cpu, parallelism: fsdp2, cpu_threads: 1}\n"
        f"sft: {{train_path: {data}, batch_size: 6, max_steps: 2, learning_rate: 0.001, "
        "micro_batch_tokens: 128, max_length_tokens: 128}\n"
    )
    result = launch(
        [*AGENTRL, "sft", "--recipe", str(recipe)]
        + ["--nproc-per-node", str(WORLD_SIZE), "--log-every", "1"]
    )
    assert result.stdout.count("SFT done: 2 steps on 12 trajectories") == 1, result.stdout
    assert result.stdout.count("step     1  loss") == 1  # rank 0 alone prints
    two_ranks = tmp_path / "run" / "sft"
    records = [
        json.loads(line) for line in (two_ranks / "sft_metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2]
    assert (two_ranks / "config.json").is_file() and (two_ranks / "tokenizer.json").is_file()

    config = load_config(recipe)
    config = config.model_copy(
        update={"trainer": config.trainer.model_copy(update={"parallelism": "single"})}
    )
    one_rank = run_sft(config, output_dir=tmp_path / "one_rank")
    for record, loss in zip(records, one_rank.losses, strict=True):
        assert record["loss"] == pytest.approx(loss, rel=RTOL)
    expected = [
        json.loads(line)
        for line in (tmp_path / "one_rank" / "sft_metrics.jsonl").read_text().splitlines()
    ]
    for record, reference in zip(records, expected, strict=True):
        assert record["grad_norm"] == pytest.approx(reference["grad_norm"], rel=RTOL)
        assert record["num_tokens"] == reference["num_tokens"]
    assert_same_tensors(
        load_file(tmp_path / "one_rank" / "model.safetensors"),
        load_file(two_ranks / "model.safetensors"),
    )


def test_single_parallelism_with_several_processes_is_refused(model_dir, tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{path: {model_dir}}}\ntrainer: {{device: cpu}}\n")
    result = launch(
        [*AGENTRL, "sft", "--recipe", str(recipe), "--nproc-per-node", "2"],
        timeout_s=60,
        check=False,
    )
    assert result.returncode == 1
    assert "set trainer.parallelism: fsdp2" in result.stderr


# ---- the RL loop --------------------------------------------------------------------------------


def test_the_rl_loop_on_two_ranks_resumes_and_equals_one_rank(
    model_dir, redis_url, one_thread, tmp_path
) -> None:
    from safetensors.torch import load_file

    from agentrl.trainer.metrics import read_step_metrics

    data = write_prompts(tmp_path / "prompts.jsonl")
    one, two = tmp_path / "one-rank", tmp_path / "two-ranks"
    rl_loop_scenario(model_dir, data, one, redis_url, "single", 3)
    launch(torchrun_this_file("rl_loop", model_dir, data, two, redis_url, 2))
    launch(torchrun_this_file("rl_loop", model_dir, data, two, redis_url, 3))  # resumes at 2

    expected, records = read_step_metrics(one), read_step_metrics(two)
    assert [r["step"] for r in records] == [1, 2, 3]  # rank 0 alone writes
    for record, reference in zip(records, expected, strict=True):
        for name in ("reward_mean", "num_loss_tokens", "num_micro_batches", "policy_version"):
            assert record[name] == reference[name], name
        for name in ("loss", "pg_loss", "entropy", "approx_kl", "clip_frac_high", "grad_norm"):
            assert record[name] == pytest.approx(reference[name], rel=RTOL, abs=ATOL), name
    assert [p.name for p in sorted((two / "checkpoints").iterdir())] == [
        "step_00000002",
        "step_00000003",
    ]
    weights = "weights/v00000003/model.safetensors"  # the last version the pool was sent
    assert_same_tensors(load_file(one / weights), load_file(two / weights))


if __name__ == "__main__":
    main(*sys.argv[1:])
