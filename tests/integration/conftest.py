"""Fixtures shared by integration modules that need a whole (small) stack in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrl.common.config import AgentRLConfig, InferenceServerConfig
from agentrl.common.grpc_server import serve
from agentrl.common.inference.launcher import VLLMServer
from agentrl.reward.main import start as start_reward
from agentrl.sandbox import executor as sandbox_executor
from agentrl.sandbox import servicer as sandbox_service


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A real `vllm serve` of the module's `model_dir` (each module defines that fixture)."""
    config = InferenceServerConfig(max_model_len=1024, max_num_seqs=32)
    with VLLMServer.launch(config, model_dir, tmp_path_factory.mktemp("logs") / "vllm.log") as s:
        yield s


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[str, str]]:
    """(sandbox address, reward address), both serving in this process."""
    config = AgentRLConfig.model_validate({"sandbox": {"max_concurrency": 4}})
    executor = sandbox_executor.Sandbox(config.sandbox)
    servicer = sandbox_service.SandboxServicer(executor)
    sandbox = serve(sandbox_service.register(servicer), [sandbox_service.SERVICE_NAME],
                    port=0, token=None, max_workers=8)
    reward = start_reward(AgentRLConfig.model_validate({
        "reward": {"grpc_port": 0, "http_port": 0, "num_verifier_workers": 1},
        "sandbox": {"address": sandbox.address}}))
    yield sandbox.address, reward.grpc.address
    reward.stop(0)
    sandbox.stop(0)
    servicer.close()
    executor.close()
