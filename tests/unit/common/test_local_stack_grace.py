"""`agentrl down` gives each service at least the drain it needs before SIGKILL: the gRPC
services their server's drain, the rollout worker its `rollout.shutdown_grace_s` and then some
(issue #20 item 5; the stack once killed a worker 30 s into its 120 s drain)."""

from __future__ import annotations

import pytest

from agentrl.common import local_stack
from agentrl.common.config import AgentRLConfig
from agentrl.common.grpc_server import DEFAULT_GRACE_S


@pytest.mark.parametrize("shutdown_grace_s", [5.0, 120.0, 600.0])
def test_the_rollout_worker_gets_its_whole_drain_and_time_to_stop_after_it(shutdown_grace_s):
    config = AgentRLConfig.model_validate({"rollout": {"shutdown_grace_s": shutdown_grace_s}})
    grace_s = local_stack.stop_grace_s(config, "rollout")
    assert grace_s == shutdown_grace_s + local_stack.ROLLOUT_STOP_MARGIN_S
    assert grace_s > shutdown_grace_s  # the default, 120 s, was four times the old 30 s


@pytest.mark.parametrize("name", ["sandbox", "reward", "search", local_stack.VLLM])
def test_the_grpc_services_drain_inside_their_stop_grace(name):
    grace_s = local_stack.stop_grace_s(AgentRLConfig(), name)
    assert grace_s == local_stack.STOP_GRACE_S
    assert grace_s > DEFAULT_GRACE_S  # their server's drain, then their clean-up
