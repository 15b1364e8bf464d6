"""The local stack's port checks name the setting to change, the vLLM server's included."""

from __future__ import annotations

import socket

from agentrl.common import local_stack
from agentrl.common.config import AgentRLConfig


def config_with_vllm_url(url: str) -> AgentRLConfig:
    return AgentRLConfig.model_validate({"inference": {"urls": [url]}})


def test_a_taken_vllm_port_names_inference_urls() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problems = local_stack.check_ports(
            config_with_vllm_url(f"http://127.0.0.1:{port}"), [local_stack.VLLM]
        )
    assert len(problems) == 1
    assert f"port {port}" in problems[0] and "inference.urls" in problems[0]


def test_a_free_vllm_port_and_a_url_without_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert (
        local_stack.check_ports(
            config_with_vllm_url(f"http://127.0.0.1:{port}"), [local_stack.VLLM]
        )
        == []
    )
    problems = local_stack.check_ports(config_with_vllm_url("http://127.0.0.1"), [local_stack.VLLM])
    assert problems and "has no port" in problems[0]


def test_only_a_local_first_url_is_served_by_the_stack() -> None:
    assert local_stack.vllm_is_local(config_with_vllm_url("http://127.0.0.1:8000"))
    assert local_stack.vllm_is_local(config_with_vllm_url("http://localhost:8000/"))
    assert not local_stack.vllm_is_local(config_with_vllm_url("http://vllm-0.vllm:8000"))
