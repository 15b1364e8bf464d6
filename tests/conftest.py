"""Fixtures shared by the unit and integration suites."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
