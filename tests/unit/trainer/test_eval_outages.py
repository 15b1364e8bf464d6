"""`agentrl eval` through an outage (eval_job.sample_through_outages): a group that met an outage
(a client past its deadline, a tool call its service could not run) is sampled again, never
scored as the model's; past `rollout.max_group_attempts` the outage's error is raised. A
scripted sampler stands in for GroupSampler (pure retry logic)."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.common.retry import Outage, ServiceUnavailableError
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.trainer import eval_job

TASK = task_pb2.RolloutTask(prompt_id="p7")
OUTAGE = Outage("reward", "127.0.0.1:1", "reward.reconnect_deadline_s", 0.1)


def group(tool_status: int) -> group_pb2.Group:
    turn = trajectory_pb2.Turn(
        tool_call=trajectory_pb2.ToolCall(tool="search", status=tool_status, output="refused")
    )
    sample = group_pb2.ScoredTrajectory(trajectory=trajectory_pb2.Trajectory(turns=[turn]))
    return group_pb2.Group(task=TASK, samples=[sample])


UNAVAILABLE = group(trajectory_pb2.TOOL_CALL_STATUS_UNAVAILABLE)
MODEL_ERROR = group(trajectory_pb2.TOOL_CALL_STATUS_ERROR)  # the model's own: an episode


class ScriptedSampler:
    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def sample(self, task):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(eval_job, "RETRY_INITIAL_S", 0.0)


def test_outages_are_sampled_again_and_the_model_error_is_kept():
    sampler = ScriptedSampler(OUTAGE.error(OSError("refused")), UNAVAILABLE, MODEL_ERROR)
    result = asyncio.run(eval_job.sample_through_outages(sampler, TASK, max_attempts=5))
    assert result is MODEL_ERROR and sampler.calls == 3


def test_past_the_attempts_the_outage_is_the_error():
    sampler = ScriptedSampler(UNAVAILABLE, OUTAGE.error(OSError("refused")))
    with pytest.raises(ServiceUnavailableError, match="reward service at 127.0.0.1:1"):
        asyncio.run(eval_job.sample_through_outages(sampler, TASK, max_attempts=2))
    sampler = ScriptedSampler(UNAVAILABLE, UNAVAILABLE)
    with pytest.raises(ConnectionError, match="p7 met an outage.*max_group_attempts.*search"):
        asyncio.run(eval_job.sample_through_outages(sampler, TASK, max_attempts=2))
    assert sampler.calls == 2
