"""What the trainer's RL-loop integration tests share: stand-ins for the rollout worker (seeded
random groups, or real vLLM samples), a stand-in vLLM pool, the loop's prompts and recipe, and
launching several ranks (torchrun, the CLI).

    tasks (Redis prompts stream) -> stand-in rollout -> Group (Redis groups stream) -> the loop

Used by test_fsdp2.py, test_megatron_launch.py, test_megatron_vllm.py, test_trainer_vllm.py and
test_megatron_quickstart.py, and under torchrun by the rank processes of the first two (a script's
folder is on sys.path there; conftest.py puts this folder there for pytest, whose importlib mode
does not). Not covered by the stand-ins: tools, verifiers, the rollout worker's own admission.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENTRL = [sys.executable, "-m", "agentrl.common.cli"]
LAUNCH_TIMEOUT_S = 240  # a 2-rank launch takes 10-20 s on 2 busy cores; room for a loaded CI
ZERO_SIGNAL_MARK = "same"  # vllm_rollout gives prompts containing it equal rewards (no signal)


# ---- launching ---------------------------------------------------------------------------------


def torchrun(script: str | Path, nproc: int, *args) -> list[str]:
    """`script` run by `nproc` ranks on this machine (each rank: `python script *args`)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
        *map(str, args),
    ]


def launch(
    args: list[str], timeout_s: float = LAUNCH_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `args` from the repository root, one thread per process (2 ranks share 2 cores),
    output captured; with `check`, a failure shows the ends of both streams."""
    result = subprocess.run(
        args,
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def stack_ports() -> dict:
    """Recipe sections that put every service of `agentrl up`'s local stack, and the trainer's
    status servers, on free ports (other tests' stacks and trainers may be up on this machine)."""
    from agentrl.common.inference.launcher import free_port

    def pair() -> dict:
        return {"grpc_port": free_port(), "http_port": free_port()}

    return {
        "sandbox": pair(),
        "reward": pair(),
        "rollout": pair(),
        "trainer": pair(),
        "inference": {"urls": [f"http://127.0.0.1:{free_port()}"]},
    }


def release_megatron() -> None:
    """Tear down megatron-core's groups and the process group a backend in this process built,
    so the next in-process run (or test) starts from nothing."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- the loop's data and recipe ----------------------------------------------------------------


def write_prompts(path: Path, count: int = 20) -> Path:
    """`count` multiplication prompts in the RL data format."""
    path.write_text(
        "".join(
            json.dumps(
                {"prompt": f"What is {i} * 7?", "ground_truth": str(7 * i), "task_type": "math"}
            )
            + "\n"
            for i in range(count)
        )
    )
    return path


def stand_in_loop_config(
    model_dir: Path, data: Path, run_dir: Path, redis_url: str, trainer: dict, learning_rate: float
):
    """The loop's config against `stand_in_pool` (disk transport: the routes it answers), two
    groups of four per step, a checkpoint every 2 steps; `trainer` adds the backend's keys."""
    from agentrl.common.config import AgentRLConfig

    return AgentRLConfig.model_validate(
        {
            "run": {"run_id": run_dir.name, "output_dir": str(run_dir), "seed": 5},
            "model": {"path": str(model_dir)},
            "data": {"train_path": str(data)},
            "redis": {"url": redis_url},
            "trainer": {
                "device": "cpu",
                "cpu_threads": 1,
                "batch_size": 2,
                "max_staleness": 0,
                "checkpoint_interval_steps": 2,
                "grpc_port": 0,
                "http_port": 0,
                "micro_batch_tokens": 40,
                "weight_transport": "disk",
                **trainer,
            },
            "algorithm": {"group_size": 4, "learning_rate": learning_rate},
        }
    )


def write_trajectories(path: Path, count: int) -> Path:
    """Calculator episodes in `load_trajectories`' format, half of them calling the tool."""
    rng = random.Random(0)
    rows = []
    for i in range(count):
        a, b = rng.randint(10, 999), rng.randint(10, 99)
        messages = [
            {"role": "system", "content": "Use Python for arithmetic."},
            {"role": "user", "content": f"What is {a} * {b}?"},
        ]
        if i % 2:
            messages += [
                {
                    "role": "assistant",
                    "content": f"Let me compute it.\n<code>\nprint({a} * {b})\n</code>",
                },
                {"role": "tool", "content": f"{a * b}\n"},
            ]
        messages.append({"role": "assistant", "content": f"The result is <answer>{a * b}</answer>"})
        rows.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(rows) + "\n")
    return path


def run_with_stand_ins(config, redis_url: str, max_steps: int) -> None:
    """`run_training` of `config` to `max_steps` (resuming from its run directory) against
    `stand_in_pool`, `seeded_rollout` answering on rank 0. Under torchrun every rank calls it."""
    import threading

    from agentrl.trainer.distributed import is_main_process
    from agentrl.trainer.rl_loop import run_training

    stop = threading.Event()
    rollout = threading.Thread(
        target=seeded_rollout, args=(redis_url, config.run.run_id, stop), daemon=True
    )
    if is_main_process():
        rollout.start()
    try:
        run_training(config, max_steps, pool=stand_in_pool(), wait_timeout_s=60)
    finally:
        stop.set()
        if rollout.is_alive():  # ended before the test stops its Redis (its reads block 0.2 s)
            rollout.join(timeout=30)


# ---- stand-ins for vLLM and the rollout worker ------------------------------------------------


def stand_in_pool():
    """An InferencePool whose one server answers in-process: weight reload and version label
    (the disk transport's routes), and any log-probs for the drift check."""
    import httpx

    from agentrl.common.inference.pool import InferencePool

    served = {"version": "0"}

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/inference/v1/generate":  # the drift check: any log-probs will do
            token_ids = json.loads(request.content)["token_ids"]
            return httpx.Response(
                200,
                json={
                    "prompt_logprobs": [None] + [{str(t): {"logprob": -6.9}} for t in token_ids[1:]]
                },
            )
        if path == "/update_weight_version":
            served["version"] = json.loads(request.content)["new_version"]
        if path == "/weight_info":
            return httpx.Response(200, json={"weight_version": served["version"]})
        return httpx.Response(200, json={"success": True})

    return InferencePool(["http://stand-in-vllm:8000"], transport=httpx.MockTransport(answer))


def sample(
    task,
    index: int,
    response: list[int],
    logprobs: list[float],
    versions: list[int],
    reward: float,
    verdict: int = 0,
):
    """One scored trajectory of `task`: its prompt, then `response` (all trained on)."""
    from agentrl.proto.core.v1 import group_pb2, trajectory_pb2

    prompt = list(task.prompt_token_ids)
    return group_pb2.ScoredTrajectory(
        trajectory=trajectory_pb2.Trajectory(
            trajectory_id=f"{task.task_id}-{index}",
            task_id=task.task_id,
            sample_index=index,
            prompt_length=len(prompt),
            token_ids=prompt + response,
            behaviour_logprobs=[0.0] * len(prompt) + logprobs,
            loss_mask=[0] * len(prompt) + [1] * len(response),
            policy_versions=[-1] * len(prompt) + versions,
        ),
        result=group_pb2.RewardResult(reward=reward, verdict=verdict),
    )


async def answer_tasks(
    redis_url: str,
    run_id: str,
    stop,
    samples_of: Callable[[object], Awaitable[list]],
    publish_first_twice: bool = False,
) -> None:
    """Until `stop` is set: each task of the run's prompts stream becomes one Group of
    `samples_of(task)`, published, then the task completed. `publish_first_twice` publishes the
    first group again, as a worker killed between publish and complete would."""
    from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout
    from agentrl.common.streams import StreamQueue
    from agentrl.proto.core.v1 import group_pb2, task_pb2

    layout = RunLayout(run_id)
    tasks = StreamQueue(redis_url, layout.prompts, PROMPTS_GROUP, consumer="stand-in")
    groups = StreamQueue(redis_url, layout.groups, GROUPS_GROUP)
    published = 0
    try:
        while not stop.is_set():
            for entry in await asyncio.to_thread(tasks.read, 4, 200):
                task = entry.decode(task_pb2.RolloutTask)
                group = group_pb2.Group(
                    group_id=task.task_id,
                    idempotency_key=task.idempotency_key,
                    task=task,
                    samples=await samples_of(task),
                )
                groups.publish(group)
                if publish_first_twice and not published:
                    groups.publish(group)
                published += 1
                tasks.complete(entry)
    finally:
        tasks.close()
        groups.close()


def seeded_rollout(redis_url: str, run_id: str, stop) -> None:
    """Each task becomes a group of random tokens seeded by its data position, so two runs (any
    run id, any world size, any backend) train on the same groups; no vLLM involved."""

    async def samples_of(task) -> list:
        rng = random.Random(task.idempotency_key.split(":", 1)[1])  # "epoch:offset"
        samples = []
        for i in range(task.num_samples):
            n = rng.randint(4, 12)
            response = [rng.randint(3, 300) for _ in range(n)]
            logprobs = [-6.9 + rng.gauss(0, 0.3) for _ in range(n)]
            versions = [task.admitted_policy_version] * n
            reward = float(rng.random() < 0.5)
            samples.append(sample(task, i, response, logprobs, versions, reward))
        return samples

    asyncio.run(answer_tasks(redis_url, run_id, stop, samples_of))


def vllm_rollout(
    server_url: str,
    redis_url: str,
    run_id: str,
    stop,
    response_tokens: int = 6,
    publish_first_twice: bool = False,
) -> None:
    """What a rollout worker does, minus tools and verifiers: real vLLM samples per task,
    rewards by rule (alternating 1/0, or all 0 for ZERO_SIGNAL_MARK prompts), one Group each."""
    from agentrl.common.inference.pool import InferencePool
    from agentrl.proto.core.v1 import group_pb2

    async def main() -> None:
        pool = InferencePool([server_url], request_timeout_s=120)

        async def samples_of(task) -> list:
            samples = []
            for i in range(task.num_samples):
                out = await pool.generate(
                    f"{task.task_id}-{i}",
                    list(task.prompt_token_ids),
                    {"max_tokens": response_tokens, "ignore_eos": True, "logprobs": 1},
                )
                reward = 0.0 if ZERO_SIGNAL_MARK in task.prompt_text else float(i % 2)
                verdict = group_pb2.VERDICT_CORRECT if reward else group_pb2.VERDICT_INCORRECT
                samples.append(
                    sample(
                        task, i, out.token_ids, out.logprobs, out.policy_versions, reward, verdict
                    )
                )
            return samples

        try:
            await answer_tasks(redis_url, run_id, stop, samples_of, publish_first_twice)
        finally:
            await pool.close()

    asyncio.run(main())
