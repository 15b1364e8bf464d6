"""Group sampling: n episodes of one `RolloutTask`, run concurrently and scored, as one `Group`.

    sampler = GroupSampler(AgentLoop(pool, tokenizer, toolbox), reward_client, worker_id="w1")
    group = await sampler.sample(task)       # task.num_samples scored trajectories

Each episode runs through `AgentLoop` (asyncio; the episodes of a group share the event loop
with every other group of the worker) and is scored by the reward service as soon as it ends
(`RewardClient.score` in a thread, so scoring one sample overlaps generating the others). The
reward request carries the trajectory's tool-call count, its response length in tokens and
whether it hit a token limit, so the service can apply tool shaping and the overlong penalty.

Response length: every token after the prompt (model tokens and tool observations), i.e. what
`EpisodeLimits.max_total_tokens` bounds besides the prompt, so the overlong penalty and the limit
agree. The `Group` carries the task, the task's idempotency key (a redelivered task yields a
group the trainer counts once), the worker id and the wall time of the whole group.

What this does NOT cover: ARPO tree sampling (`agentrl.common.agent.arpo`), retries of a failed
reward call (the `RewardClient` retries UNAVAILABLE; anything else propagates to the worker).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from agentrl.common.agent.loop import AgentLoop, EpisodeSettings
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2

EpisodeHook = Callable[[trajectory_pb2.Trajectory], None]


def trajectory_id(task: task_pb2.RolloutTask, sample_index: int) -> str:
    """Stable id of sample `sample_index` of `task` (the same on a redelivery)."""
    return f"{task.task_id}/s{sample_index}"


def response_length_tokens(traj: trajectory_pb2.Trajectory) -> int:
    """Tokens after the prompt: model tokens plus tool observations."""
    return len(traj.token_ids) - traj.prompt_length


# A call "used" its tool when the tool ran: its output (or its error, or its timeout) was real.
RAN_STATUSES = (
    trajectory_pb2.TOOL_CALL_STATUS_OK,
    trajectory_pb2.TOOL_CALL_STATUS_ERROR,
    trajectory_pb2.TOOL_CALL_STATUS_TIMEOUT,
)


def tools_used(traj: trajectory_pb2.Trajectory) -> list[str]:
    """Sorted names of the tools whose calls ran in the episode (ARPO's tool-use bonus)."""
    return sorted(
        {
            turn.tool_call.tool
            for turn in traj.turns
            if turn.HasField("tool_call") and turn.tool_call.status in RAN_STATUSES
        }
    )


def check_task(task: task_pb2.RolloutTask) -> None:
    """Raise ValueError when a task cannot be sampled."""
    if not task.task_id or not task.idempotency_key:
        raise ValueError(
            f"task needs task_id and idempotency_key, got {task.task_id!r} and "
            f"{task.idempotency_key!r}"
        )
    if task.num_samples <= 0:
        raise ValueError(
            f"task {task.task_id}: num_samples must be positive, got {task.num_samples}"
        )
    if not task.prompt_token_ids:
        raise ValueError(
            f"task {task.task_id}: prompt_token_ids is empty (token ids are the "
            "truth; the trainer tokenises prompts when it admits them)"
        )


class GroupSampler:
    """Run and score the n samples of a task."""

    def __init__(
        self,
        loop: AgentLoop,
        reward: Any,
        *,
        worker_id: str,
        default_format: str = "code_tags",
        extra_sampling: dict[str, Any] | None = None,
    ) -> None:
        self.loop = loop
        self.reward = reward  # an agentrl.reward.client.RewardClient (blocking; used in a thread)
        self.worker_id = worker_id
        self.default_format = default_format
        self.extra_sampling = dict(extra_sampling or {})
        """vLLM sampling fields added to every turn (tests constrain the tiny model with them)."""

    def settings(self, task: task_pb2.RolloutTask) -> EpisodeSettings:
        return EpisodeSettings.from_task(task, self.default_format, **self.extra_sampling)

    async def sample(
        self, task: task_pb2.RolloutTask, on_episode: EpisodeHook | None = None
    ) -> group_pb2.Group:
        """All `task.num_samples` episodes, concurrently; `on_episode` sees each trajectory as
        it ends. When one episode or score raises, the others are cancelled and it propagates."""
        check_task(task)
        started = time.monotonic()
        settings = self.settings(task)
        async with asyncio.TaskGroup() as tasks:
            running = [
                tasks.create_task(self.episode(task, settings, i, on_episode))
                for i in range(task.num_samples)
            ]
        samples = [t.result() for t in running]
        return self.build_group(task, samples, time.monotonic() - started)

    async def episode(
        self,
        task: task_pb2.RolloutTask,
        settings: EpisodeSettings,
        sample_index: int,
        on_episode: EpisodeHook | None = None,
    ) -> group_pb2.ScoredTrajectory:
        traj = await self.loop.run(
            list(task.prompt_token_ids),
            settings,
            trajectory_id=trajectory_id(task, sample_index),
            task_id=task.task_id,
            sample_index=sample_index,
        )
        if on_episode is not None:
            on_episode(traj)
        return await self.score(task, traj)

    async def score(
        self, task: task_pb2.RolloutTask, traj: trajectory_pb2.Trajectory
    ) -> group_pb2.ScoredTrajectory:
        result = await asyncio.to_thread(
            self.reward.score,
            task.task_type,
            traj.response_text,
            task.ground_truth,
            metadata=dict(task.metadata),
            num_tool_calls=traj.num_tool_calls,
            response_length_tokens=response_length_tokens(traj),
            truncated=traj.truncated,
            request_id=traj.trajectory_id,
            tools_used=tools_used(traj),
        )
        return group_pb2.ScoredTrajectory(trajectory=traj, result=result)

    def build_group(
        self,
        task: task_pb2.RolloutTask,
        samples: list[group_pb2.ScoredTrajectory],
        rollout_time_s: float,
    ) -> group_pb2.Group:
        if len(samples) != task.num_samples:
            raise ValueError(
                f"task {task.task_id}: {len(samples)} samples for a group of {task.num_samples}"
            )
        return group_pb2.Group(
            group_id=uuid.uuid4().hex,
            idempotency_key=task.idempotency_key,
            task=task,
            samples=samples,
            rollout_time_s=rollout_time_s,
            worker_id=self.worker_id,
        )
