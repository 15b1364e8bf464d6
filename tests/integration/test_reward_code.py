"""Code rewards against real sandbox executions: the sandbox service (bubblewrap backend) runs
in this process on a free port, the reward service beside it; programs run only in the sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

# The real sandbox service (bubblewrap backend, installed by scripts/setup.sh) runs the tests.
from sandbox_service_helpers import sandbox_server

from agentrl.common.config import AgentRLConfig, SandboxConfig
from agentrl.proto.core.v1 import group_pb2
from agentrl.reward.client import RewardClient
from agentrl.reward.main import RunningRewardService, start

ASSERTS = json.dumps(
    {"asserts": ["assert is_leap(2024)", "assert not is_leap(1900)", "assert is_leap(2000)"]}
)
RIGHT = "def is_leap(y):\n    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)\n"
# Subtly wrong: forgets the 400-year rule, so 2000 fails (2 of 3 asserts pass).
WRONG = "def is_leap(y):\n    return y % 4 == 0 and y % 100 != 0\n"
STDIO = json.dumps([{"input": "2 3\n", "output": "5\n"}, {"input": "-4 4\n", "output": "0\n"}])


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}```"


@pytest.fixture(scope="module")
def sandbox_address() -> Iterator[str]:
    with sandbox_server(SandboxConfig(max_concurrency=4), max_workers=64) as server:
        yield server.address


def start_reward(sandbox_address: str, **code: object) -> RunningRewardService:
    """The reward service with `code` overriding keys of `reward.code`."""
    settings = {
        "grpc_port": 0,
        "http_port": 0,
        "num_verifier_workers": 1,
        "code": {"test_timeout_s": 1.0, "verifier_timeout_s": 20.0, **code},
    }
    return start(
        AgentRLConfig.model_validate({"reward": settings, "sandbox": {"address": sandbox_address}})
    )


@pytest.fixture(scope="module")
def client(sandbox_address: str) -> Iterator[RewardClient]:
    running = start_reward(sandbox_address)
    with RewardClient(running.grpc.address, token=None) as reward_client:
        yield reward_client
    running.stop(0)


def test_correct_program_passes_every_assert(client: RewardClient) -> None:
    result = client.score("code", fenced(RIGHT), ASSERTS)
    assert result.verdict == group_pb2.VERDICT_CORRECT and result.reward == 1.0


def test_subtly_wrong_program_fails(client: RewardClient) -> None:
    result = client.score("code", fenced(WRONG), ASSERTS)
    assert result.verdict == group_pb2.VERDICT_INCORRECT and result.reward == -1.0
    assert "assert #3" in result.reason


def test_stdin_stdout_cases(client: RewardClient) -> None:
    right = "a, b = map(int, input().split())\nprint(a + b)\n"
    wrong = "a, b = map(int, input().split())\nprint(abs(a) + abs(b))\n"  # wrong for negatives
    assert client.score("code", fenced(right), STDIO).verdict == group_pb2.VERDICT_CORRECT
    failed = client.score("code", fenced(wrong), STDIO)
    assert failed.verdict == group_pb2.VERDICT_INCORRECT and "wrong output" in failed.reason


@pytest.mark.parametrize(
    ("program", "why"),
    [
        ("def is_leap(y):\n    while True:\n        pass\n", "timed out"),
        ("def is_leap(y):\n    while True:\n        print('spam' * 1000)\n", "output limit"),
        ("import sys\nsys.exit(0)\n", "exited before the test ran"),
        ("def is_leap(y):\n    return [0] * 10**10\n", "failed: MemoryError"),
    ],
)
def test_hanging_flooding_and_cheating_programs_fail(
    client: RewardClient, program: str, why: str
) -> None:
    start_s = time.monotonic()
    result = client.score("code", fenced(program), ASSERTS)
    assert result.verdict == group_pb2.VERDICT_INCORRECT, result.reason
    assert why in result.reason
    assert time.monotonic() - start_s < 10  # all_pass stops at the first failure


def test_humaneval_and_call_based(client: RewardClient) -> None:
    humaneval = json.dumps(
        {"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}
    )
    calls = json.dumps({"fn_name": "add", "inputs": [[2, 3], [0, 0]], "outputs": [5, 0]})
    for ground_truth in (humaneval, calls):
        good = client.score("code", fenced("def add(a, b):\n    return a + b\n"), ground_truth)
        bad = client.score("code", fenced("def add(a, b):\n    return a * b + 1\n"), ground_truth)
        assert good.verdict == group_pb2.VERDICT_CORRECT, good.reason
        assert bad.verdict == group_pb2.VERDICT_INCORRECT, bad.reason


@pytest.mark.slow
def test_pass_fraction_modes(sandbox_address: str) -> None:
    running = start_reward(sandbox_address, reward_mode="pass_fraction_pow", pass_power=2.0)
    try:
        with RewardClient(running.grpc.address, token=None) as reward_client:
            result = reward_client.score("code", fenced(WRONG), ASSERTS)
        # 2 of 3 pass: score (2/3)^2 = 4/9, mapped onto [-1, 1]: -1 + 2 * 4/9.
        assert result.verdict == group_pb2.VERDICT_PARTIAL
        assert result.reward == pytest.approx(-1 + 2 * 4 / 9)
        assert "2/3 tests passed" in result.reason
    finally:
        running.stop(0)
