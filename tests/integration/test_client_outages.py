"""The one retry policy at the real network boundaries (issue #20 item 1): a gRPC service and a
vLLM pool that are down for less than their `reconnect_deadline_s` are a pause for the caller;
down for longer, the call fails once, naming the service, its address and the setting."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentrl.common import grpc_client
from agentrl.common.config import AgentRLConfig
from agentrl.common.grpc_server import serve
from agentrl.common.inference.launcher import free_port
from agentrl.common.inference.pool import InferencePool, NoHealthyServer

SERVICE = "agentrl.faults.v1.Nothing"  # health and reflection are all the server needs


def check(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=60
    )
    return reply.status


def test_a_grpc_restart_shorter_than_the_deadline_is_a_pause() -> None:
    port = free_port()
    config = AgentRLConfig.model_validate(
        {"reward": {"grpc_port": port, "reconnect_deadline_s": 30.0}}
    )
    started: list = []

    def start_later() -> None:
        time.sleep(1.0)  # the first calls meet a refused connection
        started.append(serve([], [SERVICE], port=port, token=None))

    thread = threading.Thread(target=start_later)
    thread.start()
    channel = grpc_client.create_channel(
        f"127.0.0.1:{port}", token=None, outage=grpc_client.outage_for("reward", config.reward)
    )
    try:
        assert check(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        thread.join()
        channel.close()
        started[0].stop(0)


def test_a_longer_grpc_outage_is_one_error_naming_service_address_and_setting() -> None:
    port = free_port()
    config = AgentRLConfig.model_validate(
        {"sandbox": {"grpc_port": port, "reconnect_deadline_s": 0.5}}
    )
    channel = grpc_client.create_channel(
        f"127.0.0.1:{port}", token=None, outage=grpc_client.outage_for("sandbox", config.sandbox)
    )
    with pytest.raises(grpc.RpcError) as info:
        check(channel)
    channel.close()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    for part in ("sandbox", f"127.0.0.1:{port}", "sandbox.reconnect_deadline_s"):
        assert part in info.value.details()


def test_a_pool_with_no_server_waits_its_deadline_then_names_the_setting() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def generate() -> None:
        pool = InferencePool([url], reconnect_deadline_s=0.5, max_retries=0)
        try:
            await pool.generate("s", [1, 2, 3], {"max_tokens": 1})
        finally:
            await pool.close()

    with pytest.raises(NoHealthyServer) as info:
        asyncio.run(generate())
    assert url in str(info.value) and "inference.reconnect_deadline_s" in str(info.value)
