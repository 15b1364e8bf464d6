"""How the agent loop uses its tools (pure logic: a stand-in pool and tools; the real sandbox
path is tests/integration/test_quickstart.py): no call at all when a task allows none; the call
ending the last turn recorded, never run; one python session per episode, closed however the episode ends; an ARPO branch replays its prefix's
calls into its own session; several sandbox replicas, each session pinned to one."""

from __future__ import annotations

import asyncio
import contextlib

from agentrl.common.agent.loop import NO_TOOL_CALLS, AgentLoop, EpisodeSettings
from agentrl.common.agent.tools import SandboxTool, StickySandbox, ToolBox, ToolOutcome
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


class FakeSandbox:
    """SandboxClient's calls, recorded; every program prints 42."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (code, session_id)
        self.closed: list[str] = []

    def execute(self, code: str, **fields):
        from agentrl.sandbox.interface import ExecutionResult, Status

        self.calls.append((code.strip(), fields.get("session_id", "")))
        return ExecutionResult(Status.OK, stdout=b"42\n")

    def close_session(self, session_id: str) -> bool:
        self.closed.append(session_id)
        return True


def two_call_episode(sandbox, sessions: bool = True, pool_turns=None):
    tokenizer, encode = tokenizer_and_ids()
    turns = pool_turns or [
        (encode("<code>\nx = 6 * 7\n</code>"), "</code>"),
        (encode("<code>\nprint(x)\n</code>"), "</code>"),
        (encode("<answer>42</answer>"), "</answer>"),
    ]
    tools = ToolBox({"python": SandboxTool(sandbox, sessions=sessions)})
    return AgentLoop(ScriptedPool(turns), tokenizer, tools), encode


def test_an_episodes_calls_share_one_session_closed_at_the_end() -> None:
    sandbox = FakeSandbox()
    loop, encode = two_call_episode(sandbox)
    prompt = encode("What is 6 * 7?")
    first = asyncio.run(loop.run(prompt, EpisodeSettings(), trajectory_id="task/s0"))
    assert first.num_tool_calls == 2
    session_a = {s for _, s in sandbox.calls}
    assert [code for code, _ in sandbox.calls] == ["x = 6 * 7", "print(x)"]
    assert len(session_a) == 1 and next(iter(session_a)).startswith("task/s0-")
    assert sandbox.closed == list(session_a)  # closed once, after the answer
    # Another episode (even of the same trajectory id) gets another session.
    loop, _ = two_call_episode(sandbox)
    asyncio.run(loop.run(prompt, EpisodeSettings(), trajectory_id="task/s0"))
    session_b = {s for _, s in sandbox.calls[2:]}
    assert len(session_b) == 1 and session_b != session_a
    # Sessions off: no session id is sent and nothing is closed.
    plain = FakeSandbox()
    loop, _ = two_call_episode(plain, sessions=False)
    asyncio.run(loop.run(prompt, EpisodeSettings(), trajectory_id="t"))
    assert [s for _, s in plain.calls] == ["", ""] and plain.closed == []


def test_the_call_ending_the_last_turn_is_recorded_not_run() -> None:
    sandbox = FakeSandbox()
    _, encode = tokenizer_and_ids()
    turns = [
        (encode("<code>\nx = 6 * 7\n</code>"), "</code>"),
        (encode("<code>\nprint(x)\n</code>"), "</code>"),
    ]
    loop, _ = two_call_episode(sandbox, pool_turns=turns)
    prompt = encode("What is 6 * 7?")
    traj = asyncio.run(loop.run(prompt, EpisodeSettings(max_turns=2), trajectory_id="t"))
    assert traj.finish_reason == trajectory_pb2.FINISH_REASON_MAX_TURNS
    # The first turn's call ran (a later turn read it); the last turn's call did not.
    assert [code for code, _ in sandbox.calls] == ["x = 6 * 7"]
    assert traj.num_tool_calls == 1
    first, last = traj.turns
    assert first.tool_call.status == trajectory_pb2.TOOL_CALL_STATUS_OK
    assert first.observation_end > first.observation_start
    assert last.tool_call == trajectory_pb2.ToolCall(
        tool="python", arguments="print(x)", status=trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED
    )
    # No observation: the trajectory ends on the call's sampled tokens (loss mask 1).
    n = len(traj.token_ids)
    assert last.response_end == last.observation_start == last.observation_end == n
    assert list(traj.token_ids[last.response_start :]) == turns[1][0]
    assert set(traj.loss_mask[last.response_start :]) == {1}
    assert sandbox.closed == [sandbox.calls[0][1]]

    # One turn: its call is the last turn's, so nothing runs and no session is opened.
    sandbox = FakeSandbox()
    loop, _ = two_call_episode(sandbox, pool_turns=turns[:1])
    traj = asyncio.run(loop.run(prompt, EpisodeSettings(max_turns=1), trajectory_id="t1"))
    assert traj.finish_reason == trajectory_pb2.FINISH_REASON_MAX_TURNS
    assert sandbox.calls == [] and sandbox.closed == [] and traj.num_tool_calls == 0
    assert traj.turns[0].tool_call.status == trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED
    assert len(traj.token_ids) == len(prompt) + len(turns[0][0])


def test_the_session_is_closed_when_the_episode_fails_or_is_cancelled() -> None:
    from agentrl.common.inference.pool import InferenceError

    tokenizer, encode = tokenizer_and_ids()

    class FailingSecondTurn(ScriptedPool):
        async def generate(self, trajectory_id, token_ids, sampling):
            if self.requests:
                raise InferenceError("the server went away")
            return await super().generate(trajectory_id, token_ids, sampling)

    class HangingSecondTurn(ScriptedPool):
        async def generate(self, trajectory_id, token_ids, sampling):
            if self.requests:
                await asyncio.sleep(3600)
            return await super().generate(trajectory_id, token_ids, sampling)

    call = [(encode("<code>\nx = 1\n</code>"), "</code>")]
    sandbox = FakeSandbox()
    tools = ToolBox({"python": SandboxTool(sandbox)})
    failed = asyncio.run(
        AgentLoop(FailingSecondTurn(call), tokenizer, tools).run(
            encode("What is 6 * 7?"), EpisodeSettings(), trajectory_id="f"
        )
    )
    assert failed.finish_reason == trajectory_pb2.FINISH_REASON_ERROR
    assert sandbox.closed == [sandbox.calls[0][1]]

    async def cancelled() -> None:
        loop = AgentLoop(HangingSecondTurn(list(call)), tokenizer, tools)
        episode = asyncio.create_task(
            loop.run(encode("What is 6 * 7?"), EpisodeSettings(), trajectory_id="c")
        )
        while len(sandbox.calls) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        episode.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await episode

    asyncio.run(cancelled())
    assert sandbox.closed[-1] == sandbox.calls[1][1]


def test_a_branch_replays_its_prefixs_calls_into_its_own_session() -> None:
    sandbox = FakeSandbox()
    loop, encode = two_call_episode(sandbox)
    parent = asyncio.run(loop.run(encode("What is 6 * 7?"), EpisodeSettings(), trajectory_id="p"))
    # ARPO's copy: the prefix up to turn 1 (the first call and its output), resampled from there.
    from agentrl.common.agent.arpo import branch

    prefix = branch(parent, 1, "p-branch", 1)
    sandbox.calls.clear()
    tokenizer, _ = tokenizer_and_ids()
    tools = ToolBox({"python": SandboxTool(sandbox)})
    turns = [
        (encode("<code>\nprint(x)\n</code>"), "</code>"),
        (encode("<answer>42</answer>"), "</answer>"),
    ]
    branch = asyncio.run(
        AgentLoop(ScriptedPool(turns), tokenizer, tools).resume(prefix, EpisodeSettings())
    )
    assert branch.num_tool_calls == 2  # the shared first call, then its own
    # x = 6 * 7 is re-run (state only: its output is already in the prefix), then print(x).
    assert [code for code, _ in sandbox.calls] == ["x = 6 * 7", "print(x)"]
    sessions = {s for _, s in sandbox.calls}
    assert len(sessions) == 1 and next(iter(sessions)).startswith("p-branch-")
    assert sandbox.closed[-1] in sessions


def test_sticky_sandbox_sends_a_session_to_one_replica() -> None:
    replicas = [FakeSandbox() for _ in range(3)]
    sticky = StickySandbox(replicas)
    ids = [f"run:0:{i}/s0-abc" for i in range(12)]
    for session_id in ids * 2:
        sticky.execute("print(1)", session_id=session_id)
    for session_id in ids:
        holders = [r for r in replicas if any(s == session_id for _, s in r.calls)]
        assert len(holders) == 1
        sticky.close_session(session_id)
        assert session_id in holders[0].closed
    assert all(r.calls for r in replicas)  # 12 sessions spread over the 3
    for _ in range(3):
        sticky.execute("print(1)")  # no session: round-robin
    assert [sum(1 for _, s in r.calls if not s) for r in replicas] == [1, 1, 1]


def test_the_sandbox_client_follows_the_config_and_sessions_need_bwrap() -> None:
    import pytest

    from agentrl.common.agent.tools import sandbox_client
    from agentrl.common.config import AgentRLConfig
    from agentrl.sandbox.client import SandboxClient

    one = AgentRLConfig.model_validate({"sandbox": {"address": "127.0.0.1:1"}})
    with sandbox_client(one.sandbox) as client:
        assert isinstance(client, SandboxClient)
    several = AgentRLConfig.model_validate(
        {"sandbox": {"addresses": ["127.0.0.1:1", "127.0.0.1:2"]}}
    )
    with sandbox_client(several.sandbox) as client:
        assert isinstance(client, StickySandbox) and len(client.clients) == 2
    # Sessions default to on with bwrap, off with docker; asking for them on docker is refused.
    assert one.rollout.python_sessions is True
    docker = AgentRLConfig.model_validate({"sandbox": {"backend": "docker"}})
    assert docker.rollout.python_sessions is False
    with pytest.raises(ValueError, match="set rollout.python_sessions: false"):
        AgentRLConfig.model_validate(
            {"sandbox": {"backend": "docker"}, "rollout": {"python_sessions": True}}
        )


def test_a_hermes_call_runs_its_code_argument() -> None:
    from agentrl.common.agent.tools import PYTHON_ARGUMENTS_ERROR, python_code
    from agentrl.common.tool_formats import get_format

    hermes = get_format("hermes")
    call = hermes.parse(
        '<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
    )
    sandbox = FakeSandbox()
    outcome = asyncio.run(SandboxTool(sandbox).run(call, "s"))
    # The program is the `code` argument, not the JSON object (a dict literal printing nothing).
    assert sandbox.calls == [("print(6 * 7)", "s")]
    assert outcome.status == trajectory_pb2.TOOL_CALL_STATUS_OK
    # Wrong arguments are an error the model sees; nothing runs.
    wrong = hermes.parse('<tool_call>{"name": "python", "arguments": {"program": "1"}}</tool_call>')
    outcome = asyncio.run(SandboxTool(sandbox).run(wrong, "s"))
    assert outcome.status == trajectory_pb2.TOOL_CALL_STATUS_ERROR
    assert outcome.output == PYTHON_ARGUMENTS_ERROR and len(sandbox.calls) == 1
    # A tag call's text is the program, even when it happens to be JSON.
    assert python_code("print(1)\n") == "print(1)\n"
    assert python_code("[1, 2]") == "[1, 2]"
    assert python_code('{"code": "x = 1"}') == "x = 1"
