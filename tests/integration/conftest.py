"""Fixtures shared by integration modules that need a whole (small) stack in this process; and
this folder on sys.path, so modules import the helpers beside them (`from loop_helpers import
...`), which pytest's importlib mode does not allow by itself."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agentrl.common.config import AgentRLConfig, InferenceServerConfig, SandboxConfig
from agentrl.common.inference.launcher import VLLMServer
from agentrl.reward.main import start as start_reward

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own on a free port (nothing shared is touched)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A real `vllm serve` of the module's `model_dir` (each module defines that fixture)."""
    config = InferenceServerConfig(max_model_len=1024, max_num_seqs=32)
    with VLLMServer.launch(config, model_dir, tmp_path_factory.mktemp("logs") / "vllm.log") as s:
        yield s


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[str, str]]:
    """(sandbox address, reward address), both serving in this process."""
    from sandbox_service_helpers import sandbox_server  # beside this file, on sys.path (above)

    with sandbox_server(SandboxConfig(max_concurrency=4)) as sandbox:
        reward = start_reward(
            AgentRLConfig.model_validate(
                {
                    "reward": {"grpc_port": 0, "http_port": 0, "num_verifier_workers": 1},
                    "sandbox": {"address": sandbox.address},
                }
            )
        )
        yield sandbox.address, reward.grpc.address
        reward.stop(0)
