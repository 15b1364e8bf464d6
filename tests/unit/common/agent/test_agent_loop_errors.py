"""An episode whose generation fails mid-way still accounts for every token (pure logic: a
stand-in pool and tool; the real vLLM path is tests/integration/test_rollout_agent_loop.py)."""

from __future__ import annotations

import asyncio

from agentrl.common.agent.loop import AgentLoop, EpisodeSettings
from agentrl.common.agent.tools import ToolBox, ToolOutcome
from agentrl.common.inference.pool import GenerationResult, InferenceError
from agentrl.common.models import train_tokenizer
from agentrl.proto.core.v1 import trajectory_pb2


class OneTurnThenFailingPool:
    """Samples one tool call, then refuses the next request (as vLLM does past its context)."""

    def __init__(self, call_ids: list[int]) -> None:
        self.call_ids, self.calls = call_ids, 0

    async def generate(self, trajectory_id, token_ids, sampling) -> GenerationResult:
        self.calls += 1
        if self.calls > 1:
            raise InferenceError("prompt is longer than the maximum model length")
        n = len(self.call_ids)
        return GenerationResult(
            self.call_ids,
            [-0.5] * n,
            [[] for _ in range(n)],
            [3] * n,
            "stop",
            "</code>",
            "http://stand-in",
        )

    def release(self, trajectory_id) -> None:
        pass


class EchoTool:
    async def run(self, call, session_id) -> ToolOutcome:
        return ToolOutcome(trajectory_pb2.TOOL_CALL_STATUS_OK, "42\n")


def test_a_failed_turn_is_closed_and_the_episode_is_an_error() -> None:
    tokenizer = train_tokenizer(["<code>\nprint(6 * 7)\n</code> 42 What is"] * 20, 300)
    call_ids = tokenizer.encode("<code>\nprint(6 * 7)\n</code>", add_special_tokens=False)
    loop = AgentLoop(OneTurnThenFailingPool(call_ids), tokenizer, ToolBox({"python": EchoTool()}))
    prompt = tokenizer.encode("What is 6 * 7?", add_special_tokens=False)
    traj = asyncio.run(loop.run(prompt, EpisodeSettings(), trajectory_id="t"))
    assert traj.finish_reason == trajectory_pb2.FINISH_REASON_ERROR and "maximum" in traj.error
    assert len(traj.turns) == 2
    first, failed = traj.turns
    assert (first.response_start, first.response_end) == (len(prompt), len(prompt) + len(call_ids))
    assert first.observation_end > first.observation_start == first.response_end
    # The failed turn sampled nothing: an empty span at the end, no observation, no call.
    assert (
        failed.response_start
        == failed.response_end
        == failed.observation_start
        == failed.observation_end
        == len(traj.token_ids)
    )
    assert not failed.HasField("tool_call")
