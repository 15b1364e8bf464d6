"""How the agent loop uses its tools (pure logic: a stand-in pool and tools; the real sandbox
path is tests/integration/test_quickstart.py): no call at all when a task allows none."""

from __future__ import annotations

import asyncio

from agentrl.common.agent.loop import NO_TOOL_CALLS, AgentLoop, EpisodeSettings
from agentrl.common.agent.tools import ToolBox, ToolOutcome
from agentrl.common.inference.pool import GenerationResult
from agentrl.common.models import train_tokenizer
from agentrl.proto.core.v1 import task_pb2, trajectory_pb2

CORPUS = ["<code>\nx = 6 * 7\n</code> <code>\nprint(x)\n</code> 42 What is <answer>42</answer>"]


class ScriptedPool:
    """Answers each turn with the next of `turns` (token ids), stopping like vLLM on a tag."""

    def __init__(self, turns: list[tuple[list[int], str | None]]) -> None:
        self.turns, self.requests = list(turns), []

    async def generate(self, trajectory_id, token_ids, sampling) -> GenerationResult:
        self.requests.append(list(token_ids))
        ids, stop = self.turns.pop(0)
        n = len(ids)
        return GenerationResult(
            ids, [-0.5] * n, [[] for _ in range(n)], [1] * n, "stop", stop, "http://stand-in"
        )

    def release(self, trajectory_id) -> None:
        pass


class RecordingTool:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def run(self, call, session_id) -> ToolOutcome:
        self.calls.append((call.arguments.strip(), session_id))
        return ToolOutcome(trajectory_pb2.TOOL_CALL_STATUS_OK, "42\n")


def tokenizer_and_ids():
    tokenizer = train_tokenizer(CORPUS * 20, 300)

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return tokenizer, encode


def test_a_task_allowing_no_tool_call_ends_at_the_first_call_unrun() -> None:
    tokenizer, encode = tokenizer_and_ids()
    tool = RecordingTool()
    pool = ScriptedPool([(encode("<code>\nx = 6 * 7\n</code>"), "</code>")])
    loop = AgentLoop(pool, tokenizer, ToolBox({"python": tool}))
    task = task_pb2.RolloutTask(limits=task_pb2.EpisodeLimits(max_tool_calls=NO_TOOL_CALLS))
    traj = asyncio.run(
        loop.run(encode("What is 6 * 7?"), EpisodeSettings.from_task(task), trajectory_id="t")
    )
    assert traj.finish_reason == trajectory_pb2.FINISH_REASON_MAX_TOOL_CALLS
    assert tool.calls == [] and traj.num_tool_calls == 0
    assert len(pool.requests) == 1
