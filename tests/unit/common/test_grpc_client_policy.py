"""Client retry policy and error messages (the calls themselves: tests/integration)."""

from __future__ import annotations

import grpc
import pytest

from agentrl.common import grpc_client


def test_backoff_grows_exponentially_up_to_the_cap():
    policy = grpc_client.RetryPolicy(
        max_attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0, jitter=0.0
    )
    assert [policy.backoff_s(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])


def test_jitter_stays_within_bounds():
    policy = grpc_client.RetryPolicy(initial_backoff_s=1.0, max_backoff_s=1.0, jitter=0.2)
    samples = [policy.backoff_s(1) for _ in range(200)]
    assert all(0.8 <= s <= 1.2 for s in samples)
    assert max(samples) - min(samples) > 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff_s": -1},
        {"initial_backoff_s": 3, "max_backoff_s": 2},
        {"multiplier": 0.5},
        {"jitter": 1.0},
    ],
)
def test_invalid_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        grpc_client.RetryPolicy(**kwargs)


def test_rpc_call_error_names_target_method_and_attempts():
    error = grpc_client.RpcCallError(
        "sandbox:50051",
        "/agentrl.sandbox.v1.SandboxService/Run",
        grpc.StatusCode.UNAVAILABLE,
        "connection refused",
        attempts=4,
    )
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and error.details() == "connection refused"
    assert str(error) == (
        "/agentrl.sandbox.v1.SandboxService/Run on sandbox:50051 failed with UNAVAILABLE "
        "after 4 attempts: connection refused"
    )


@pytest.mark.parametrize("timeout_s", [0, -1.0])
def test_non_positive_default_timeout_is_rejected(timeout_s):
    with pytest.raises(ValueError, match="default_timeout_s"):
        grpc_client.create_channel("127.0.0.1:1", token=None, default_timeout_s=timeout_s)
