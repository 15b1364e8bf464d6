"""ARPO tree sampling (ALGORITHMS.md §4): branch paths where entropy rises after a tool result.

    sampler = TaskSampler(loop, reward, worker_id="w1", arpo=config.rollout.arpo,
                          vocab_size=len(tokenizer))
    group = await sampler.sample(task)    # task.tree_sampling: exactly task.num_samples (M)

The parameters are `rollout.arpo` (`ARPOConfig`: ALGORITHMS.md §4's reference defaults, checked
by the config). Per prompt (one `sample()` call; nothing carries over between calls, so H_init
is reset per batch, unlike the reference code):
1. N = `initial_samples` global paths start (at most M). Each runs the agent loop.
2. Entropy of a turn: mean over its first k = `entropy_tokens` tokens of the normalised entropy
   `H = -sum(p log p) / log|V|` over the top-K = `top_logprobs` log-probs vLLM returns. H_init is
   a path's first turn's entropy (a branch inherits its parent's).
3. On every turn that follows a tool observation: `P = clip(U - beta (H_t - H_init), 0, 1)`,
   U ~ uniform(0, 1); when `P <= tau`, up to `beam_size - 1` copies branch off (budget allowing).
   A copy shares the parent's prefix up to the end of the observation (token ids, mask,
   log-probs, earlier turns) and samples that turn again on its own; it records
   `parent_trajectory_id` and `branch_point` (its first own token). A copy does not branch at
   its own first turn (the parent already decided that round).
4. When the paths of a wave end with slots left, that many new global samples start. Exactly M
   trajectories come back, `sample_index` 0..M-1 in the order their slots were taken.

Advantage attribution (soft/hard) is the trainer's: it reads the tree from the trajectories.
A task without `tree_sampling` is plain group sampling (`GroupSampler.sample`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agentrl.common.agent.group import EpisodeHook, GroupSampler, check_task, trajectory_id
from agentrl.common.config import ARPOConfig
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2


def normalised_entropy(top: Sequence[tuple[int, float]], vocab_size: int) -> float:
    """`-sum(p log p) / log|V|` over the given (token id, log-prob) pairs; -inf entries
    (tokens a grammar masked out) contribute 0."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 to normalise entropy, got {vocab_size}")
    h = -sum(math.exp(lp) * lp for _id, lp in top if lp > -math.inf)
    return h / math.log(vocab_size)


def window_entropy(
    top_per_token: Sequence[Sequence[tuple[int, float]]], k: int, vocab_size: int
) -> float | None:
    """Mean normalised entropy of the first `k` tokens; None when there are none."""
    window = top_per_token[:k]
    if not window:
        return None
    return sum(normalised_entropy(t, vocab_size) for t in window) / len(window)


def branch_probability(u: float, h_t: float, h_init: float, beta: float) -> float:
    """ARPO's P = clip(U - beta (H_t - H_init), 0, 1): lower (likelier to branch) as H rises."""
    return min(max(u - beta * (h_t - h_init), 0.0), 1.0)


class TreeBudget:
    """Slots of one prompt's M samples: global paths and branch copies both take one."""

    def __init__(self, total: int, beam_size: int) -> None:
        if total < 1 or beam_size < 1:
            raise ValueError(f"total and beam_size must be >= 1, got {total} and {beam_size}")
        self.total, self.max_copies, self.used = total, beam_size - 1, 0

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def reserve(self, n: int) -> list[int]:
        """Up to `n` slot indices (fewer when the budget runs out)."""
        granted = max(min(n, self.remaining), 0)
        slots = list(range(self.used, self.used + granted))
        self.used += granted
        return slots

    def copies(self) -> list[int]:
        """Slots for the copies of one branching decision (at most beam_size - 1)."""
        return self.reserve(self.max_copies)


def branch(
    parent: trajectory_pb2.Trajectory, turn_index: int, new_id: str, sample_index: int
) -> trajectory_pb2.Trajectory:
    """A copy of `parent` up to the start of turn `turn_index` (its shared prefix)."""
    point = parent.turns[turn_index].response_start
    turns = parent.turns[:turn_index]
    return trajectory_pb2.Trajectory(
        trajectory_id=new_id,
        task_id=parent.task_id,
        sample_index=sample_index,
        prompt_length=parent.prompt_length,
        token_ids=parent.token_ids[:point],
        behaviour_logprobs=parent.behaviour_logprobs[:point],
        loss_mask=parent.loss_mask[:point],
        policy_versions=parent.policy_versions[:point],
        turns=turns,
        num_tool_calls=sum(
            1
            for t in turns
            if t.HasField("tool_call")
            and t.tool_call.status != trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED
        ),
        parent_trajectory_id=parent.trajectory_id,
        branch_point=point,
    )


class TaskSampler(GroupSampler):
    def __init__(
        self,
        loop: Any,
        reward: Any,
        *,
        worker_id: str,
        arpo: ARPOConfig,
        vocab_size: int,
        uniform: Callable[[], float] = random.random,
        **kwargs: Any,
    ) -> None:
        super().__init__(loop, reward, worker_id=worker_id, **kwargs)
        self.arpo, self.vocab_size, self.uniform = arpo, vocab_size, uniform
        self.decisions = 0  # branching decisions taken (for logs and tests)

    async def sample(
        self, task: task_pb2.RolloutTask, on_episode: EpisodeHook | None = None
    ) -> group_pb2.Group:
        if not task.tree_sampling:
            return await super().sample(task, on_episode)
        check_task(task)
        started = time.monotonic()
        settings = self.settings(task)
        logprobs = max(settings.sampling.get("logprobs", 0), self.arpo.top_logprobs)
        settings = replace(settings, sampling={**settings.sampling, "logprobs": logprobs})
        budget = TreeBudget(task.num_samples, self.arpo.beam_size)
        results: dict[int, group_pb2.ScoredTrajectory] = {}
        wave = min(self.arpo.initial_samples, task.num_samples)
        while budget.remaining:  # each wave: new global paths into the slots left
            async with asyncio.TaskGroup() as tasks:
                for slot in budget.reserve(wave):
                    tasks.create_task(
                        self._path(task, settings, slot, budget, tasks, results, on_episode)
                    )
            wave = budget.remaining
        samples = [results[i] for i in range(task.num_samples)]
        return self.build_group(task, samples, time.monotonic() - started)

    async def _path(
        self,
        task,
        settings,
        slot: int,
        budget: TreeBudget,
        tasks: asyncio.TaskGroup,
        results: dict,
        on_episode: EpisodeHook | None,
        prefix: trajectory_pb2.Trajectory | None = None,
        h_init: float | None = None,
    ) -> None:
        first_own_turn = len(prefix.turns) if prefix is not None else 0
        state = {"h_init": h_init}

        def on_turn(traj: trajectory_pb2.Trajectory, out: Any) -> None:
            h = window_entropy(out.top_logprobs, self.arpo.entropy_tokens, self.vocab_size)
            index = len(traj.turns) - 1
            if h is None:
                return
            if state["h_init"] is None:  # the path's first step
                state["h_init"] = h
                return
            previous = traj.turns[index - 1] if index > 0 else None
            if (
                index == first_own_turn
                or previous is None
                or previous.observation_end == previous.observation_start
            ):
                return  # not a fresh turn after a tool result
            self.decisions += 1
            p = branch_probability(self.uniform(), h, state["h_init"], self.arpo.beta)
            if p > self.arpo.tau:
                return
            for copy_slot in budget.copies():
                child = branch(traj, index, trajectory_id(task, copy_slot), copy_slot)
                tasks.create_task(
                    self._path(
                        task,
                        settings,
                        copy_slot,
                        budget,
                        tasks,
                        results,
                        on_episode,
                        prefix=child,
                        h_init=state["h_init"],
                    )
                )

        if prefix is None:
            traj = await self.loop.run(
                list(task.prompt_token_ids),
                settings,
                trajectory_id=trajectory_id(task, slot),
                task_id=task.task_id,
                sample_index=slot,
                on_turn=on_turn,
            )
        else:
            traj = await self.loop.resume(prefix, settings, on_turn=on_turn)
        if on_episode is not None:
            on_episode(traj)
        results[slot] = await self.score(task, traj)
