"""The rollout worker's episode slots, with real Redis streams and a scripted sampler in place
of vLLM (each episode ends when the test says so): a task starts as soon as its n episodes fit
under `rollout.max_concurrent_episodes`, counting only episodes still running, so a group's
stragglers do not hold the slots of its finished episodes; the cap is never exceeded."""

from __future__ import annotations

import asyncio
import threading
import time

import redis

from agentrl.common.config import AgentRLConfig
from agentrl.common.run_layout import PROMPTS_GROUP, RunLayout
from agentrl.common.streams import StreamQueue
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.rollout.metrics import RolloutMetrics
from agentrl.rollout.worker import RolloutWorker

REDIS_URL = "redis://127.0.0.1:6379/0"
CAP, N = 4, 2  # two tasks of two episodes fill the cap
# Bounds every wait for the worker (never a measured duration): generous for a loaded machine.
WAIT_S = 30.0


class ScriptedSampler:
    """Episodes that run until `end(key, index)`; records how many ran at once."""

    worker_id = "w-slots"

    def __init__(self) -> None:
        self.started: set[str] = set()
        self.ends: dict[tuple[str, int], asyncio.Event] = {}
        self.running = self.max_running = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def end(self, key: str, index: int) -> None:
        event = self.ends.setdefault((key, index), asyncio.Event())
        self.loop.call_soon_threadsafe(event.set)

    async def episode(self, task, index, on_episode):
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        await self.ends.setdefault((task.idempotency_key, index), asyncio.Event()).wait()
        self.running -= 1
        traj = trajectory_pb2.Trajectory(trajectory_id=f"{task.task_id}-{index}")
        on_episode(traj)
        return group_pb2.ScoredTrajectory(trajectory=traj)

    async def sample(self, task, on_episode=None) -> group_pb2.Group:
        self.started.add(task.idempotency_key)
        samples = await asyncio.gather(
            *(self.episode(task, i, on_episode) for i in range(task.num_samples))
        )
        return group_pb2.Group(idempotency_key=task.idempotency_key, samples=samples)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S} s")
        time.sleep(0.02)


def test_a_task_starts_on_slots_freed_by_episodes_of_unfinished_groups(run_id: str) -> None:
    config = AgentRLConfig.model_validate(
        {
            "run": {"run_id": run_id},
            "redis": {"url": REDIS_URL},
            "rollout": {"max_concurrent_episodes": CAP},
        }
    )
    layout = RunLayout(run_id)
    prompts = StreamQueue(REDIS_URL, layout.prompts, PROMPTS_GROUP)
    for key in ("a", "b", "c"):
        task = task_pb2.RolloutTask(
            task_id=key, idempotency_key=key, prompt_token_ids=[1, 2], num_samples=N
        )
        prompts.publish(task, idempotency_key=key)
    sampler = ScriptedSampler()
    worker = RolloutWorker(
        config, sampler, pool=None, metrics=RolloutMetrics(registry=None), worker_id="w-slots"
    )
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            sampler.loop = asyncio.get_running_loop()
            await worker.run(on_started=ready.set)

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(WAIT_S)
        wait_until(lambda: sampler.started == {"a", "b"}, "start of tasks a and b")
        # One episode of each group ends: neither group is complete, yet two slots are free.
        sampler.end("a", 0)
        sampler.end("b", 0)
        wait_until(lambda: "c" in sampler.started, "start of task c on the freed slots")
        for key in ("a", "b", "c"):
            for index in range(N):
                sampler.end(key, index)
        client = redis.Redis.from_url(REDIS_URL)
        wait_until(lambda: client.xlen(layout.groups) == 3, "three groups")
        assert sampler.max_running <= CAP
        wait_until(lambda: worker.reserved == 0, "every slot given back")
        assert worker.metrics.in_flight_local == 0
    finally:
        worker.request_stop()
        thread.join(WAIT_S)
    assert not thread.is_alive()
