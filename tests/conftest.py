"""Fixtures shared by the unit and integration suites."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

# The Redis every suite test uses (scripts/setup.sh starts it); a run's own stack uses its own.
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def run_id() -> Iterator[str]:
    """A fresh run namespace on the shared Redis; its keys are deleted afterwards."""
    run = f"test-{uuid.uuid4().hex[:12]}"
    yield run
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"agentrl:{run}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def run_ranks() -> Callable[..., subprocess.CompletedProcess]:
    """`run_ranks(script, nproc, *args)`: `script` on `nproc` ranks of this machine under
    torchrun (each rank: `python script *args`); asserts that every rank exited 0."""

    def run(script, nproc: int, *args, timeout_s: float = 300) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc-per-node={nproc}", str(script), *map(str, args)]
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=timeout_s
        )
        assert done.returncode == 0, done.stderr[-6000:]
        return done

    return run
