"""The reward service for real: gRPC on a free loopback port, verifier processes, HTTP probes.

The sandbox address points at a closed port here, so code verifications show the
sandbox-down path; code against a real sandbox lives in test_reward_code.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentrl.common.config import AgentRLConfig
from agentrl.proto.core.v1 import group_pb2
from agentrl.proto.reward.v1 import reward_pb2
from agentrl.reward.client import RewardClient
from agentrl.reward.main import RunningRewardService, start
from agentrl.reward.verifier import CORRECT, INCORRECT, Verification, VerifyInput

PATHOLOGICAL = r"\boxed{9^{9^{9^{9}}}}"


def length_verifier(item: VerifyInput) -> Verification:
    """A custom verifier (loaded by import path): correct when the response has gold's length."""
    ok = len(item.response_text) == int(item.ground_truth)
    return Verification(
        CORRECT if ok else INCORRECT, float(ok), f"length {len(item.response_text)}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_config(**reward: object) -> AgentRLConfig:
    settings = {
        "grpc_port": 0,
        "http_port": 0,
        "num_verifier_workers": 1,
        "verifier_timeout_s": 2.0,
        "code": {"verifier_timeout_s": 5.0},
        **reward,
    }
    return AgentRLConfig.model_validate(
        {
            "reward": settings,
            "sandbox": {"address": f"127.0.0.1:{free_port()}"},  # nothing listens there
        }
    )


@pytest.fixture(scope="module")
def service() -> Iterator[RunningRewardService]:
    running = start(
        make_config(
            tool_shaping={"enabled": True},
            tool_use_bonus={"enabled": True},
            custom_verifiers={"length": f"{__name__}:length_verifier"},
        )
    )
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def client(service: RunningRewardService) -> Iterator[RewardClient]:
    with RewardClient(service.grpc.address, token=None) as reward_client:
        yield reward_client


def test_math_scores_with_components(client: RewardClient) -> None:
    right = client.score("math", r"so \boxed{\frac{1}{2}}", "0.5", response_length_tokens=18432)
    assert right.verdict == group_pb2.VERDICT_CORRECT
    assert right.components.correctness == 1.0
    assert right.components.overlong_penalty == pytest.approx(-0.5)  # middle of the buffer
    assert right.reward == pytest.approx(0.5) and right.verify_time_s > 0
    wrong = client.score("math", r"\boxed{0.51}", "1/2", num_tool_calls=3)
    assert wrong.verdict == group_pb2.VERDICT_INCORRECT
    assert wrong.reward == pytest.approx(min(-0.6, -1 + 0.1 * 3))  # tool shaping is wired
    assert "0.51" in wrong.reason
    both = client.score("math", r"\boxed{2}", "2", tools_used=["python", "search"])
    assert both.reward == pytest.approx(1.1)  # ARPO's tool-use bonus is wired
    assert client.score("math", r"\boxed{2}", "2", tools_used=["python"]).reward == 1.0


def test_batch_keeps_order_and_request_ids(client: RewardClient) -> None:
    requests = [
        reward_pb2.ScoreRequest(
            task_type="qa",
            response_text="<answer>Paris</answer>",
            ground_truth='["Paris"]',
            request_id="a",
        ),
        reward_pb2.ScoreRequest(
            task_type="format", response_text="<answer>x</answer> more", request_id="b"
        ),
        reward_pb2.ScoreRequest(
            task_type="length", response_text="abc", ground_truth="3", request_id="c"
        ),
    ]
    response = client.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(requests=requests))
    assert [r.request_id for r in response.responses] == ["a", "b", "c"]
    verdicts = [r.result.verdict for r in response.responses]
    assert verdicts == [
        group_pb2.VERDICT_CORRECT,
        group_pb2.VERDICT_FORMAT_ERROR,
        group_pb2.VERDICT_CORRECT,
    ]
    assert response.responses[1].result.components.format == -1.0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"task_type": "poetry", "ground_truth": "x"}, "task_type"),
        ({"task_type": "", "ground_truth": "x"}, "task_type"),
        ({"task_type": "math"}, "ground_truth"),
        ({"task_type": "code", "ground_truth": "{not json"}, "ground_truth"),
        ({"task_type": "qa", "ground_truth": '{"gold": []}'}, "ground_truth"),
        ({"task_type": "math", "ground_truth": "1", "num_tool_calls": -1}, "num_tool_calls"),
        (
            {"task_type": "math", "ground_truth": "1", "response_length_tokens": -5},
            "response_length_tokens",
        ),
    ],
)
def test_malformed_requests_name_the_field(
    client: RewardClient, request_fields: dict, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Score(reward_pb2.ScoreRequest(**request_fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}:")


def test_batch_errors_name_the_item(client: RewardClient) -> None:
    good = reward_pb2.ScoreRequest(task_type="math", response_text=r"\boxed{1}", ground_truth="1")
    bad = reward_pb2.ScoreRequest(task_type="math", response_text=r"\boxed{1}")
    with pytest.raises(grpc.RpcError) as info:
        client.stub.ScoreBatch(reward_pb2.ScoreBatchRequest(requests=[good, bad]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("requests[1].ground_truth:")


def test_hanging_math_is_a_verifier_error_and_the_service_lives_on(
    service: RunningRewardService, client: RewardClient
) -> None:
    start_s = time.monotonic()
    hung = client.score("math", PATHOLOGICAL, "3", num_tool_calls=2)
    assert time.monotonic() - start_s < 5.0
    assert hung.verdict == group_pb2.VERDICT_VERIFIER_ERROR
    assert hung.reason.startswith("timeout:") and hung.components.tool_shaping == 0.0
    assert client.score("math", r"\boxed{3}", "3").verdict == group_pb2.VERDICT_CORRECT
    metrics = httpx.get(f"{service.http.url}/metrics").text
    assert 'agentrl_reward_verifier_worker_restarts_total{reason="timeout"}' in metrics


def test_code_with_the_sandbox_down_is_a_verifier_error(client: RewardClient) -> None:
    result = client.score(
        "code", "```python\ndef f(x):\n    return x\n```", '{"asserts": ["assert f(1) == 1"]}'
    )
    assert result.verdict == group_pb2.VERDICT_VERIFIER_ERROR
    assert "sandbox" in result.reason
    no_program = client.score("code", "I would write it in C.", '{"asserts": ["assert 1"]}')
    assert no_program.verdict == group_pb2.VERDICT_NO_ANSWER


def test_health_probes_and_metrics(service: RunningRewardService, client: RewardClient) -> None:
    client.score("math", r"\boxed{2}", "2")
    with grpc.insecure_channel(service.grpc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="agentrl.reward.v1.RewardService"), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{service.http.url}/healthz").status_code == 200
    assert httpx.get(f"{service.http.url}/readyz").status_code == 200
    metrics = httpx.get(f"{service.http.url}/metrics").text
    assert 'agentrl_reward_scores_total{task_type="math",verdict="VERDICT_CORRECT"}' in metrics
    assert "agentrl_reward_verify_duration_seconds_bucket" in metrics


@pytest.mark.slow
def test_overload_is_resource_exhausted() -> None:
    running = start(make_config(max_concurrency=1, queue_size=0))
    try:
        with RewardClient(running.grpc.address, token=None) as reward_client:
            slow = threading.Thread(target=reward_client.score, args=("math", PATHOLOGICAL, "3"))
            slow.start()
            # Wait until the slow verification holds the only slot (a fixed sleep races on a
            # loaded machine).
            deadline = time.monotonic() + 30
            while running.scorer._admitted < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert running.scorer._admitted == 1
            with pytest.raises(grpc.RpcError) as info:
                reward_client.score("math", r"\boxed{1}", "1")
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            slow.join()
            assert reward_client.score("math", r"\boxed{1}", "1").verdict == CORRECT
    finally:
        running.stop(0)


@pytest.mark.slow
def test_main_serves_until_sigterm_and_exits_cleanly() -> None:
    port = free_port()
    env = {
        **os.environ,
        "AGENTRL__REWARD__GRPC_PORT": str(port),
        "AGENTRL__REWARD__HTTP_PORT": "0",
        "AGENTRL__REWARD__NUM_VERIFIER_WORKERS": "1",
    }
    code = (
        "from agentrl.common.config import load_config\n"
        "from agentrl.reward.main import main\n"
        "main(load_config())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        with RewardClient(f"127.0.0.1:{port}", token=None, timeout_s=30) as reward_client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert reward_client.score("math", r"\boxed{4}", "4").verdict == CORRECT
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
