"""The sessions' memory budget against the real bwrap backend: a new session that would pass
it evicts the least recently used idle session (whose next call says its state was lost), the
eviction is counted in the metrics, and a session too large for the budget is refused."""

import pytest
from prometheus_client import CollectorRegistry

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status


@pytest.fixture(scope="module")
def sandbox():
    registry = CollectorRegistry()
    config = SandboxConfig(max_concurrency=2, queue_size=8, session_memory_budget_mb=640)
    sandbox = Sandbox(config, registry=registry)
    sandbox.test_registry = registry
    yield sandbox
    sandbox.close()


def call(sandbox, session_id, code, memory_mb=256):
    return sandbox.execute(ExecutionRequest(code=code, session_id=session_id, memory_mb=memory_mb))


def test_least_recently_used_idle_session_is_evicted_for_the_budget(sandbox):
    registry = sandbox.test_registry
    assert call(sandbox, "a", "x = 'a'").status == Status.OK
    assert call(sandbox, "b", "x = 'b'").status == Status.OK
    assert call(sandbox, "a", "print(x)").stdout == "a\n"  # b is now the least recently used
    assert sandbox.sessions.reserved_mb() == 512
    assert registry.get_sample_value("agentrl_sandbox_session_memory_reserved_bytes") == 512 << 20
    # A third 256 MB session passes 640 MB: b goes, a keeps its state.
    assert call(sandbox, "c", "x = 'c'").status == Status.OK
    assert sandbox.sessions.reserved_mb() == 512
    evicted = registry.get_sample_value(
        "agentrl_sandbox_session_evictions_total", {"reason": "memory_budget"}
    )
    assert evicted == 1
    assert call(sandbox, "a", "print(x)").stdout == "a\n"
    again = call(sandbox, "b", "print('x' in dir())")
    assert again.stdout == "False\n" and "evicted (memory_budget)" in again.message


def test_a_session_larger_than_the_budget_is_refused(sandbox):
    result = call(sandbox, "huge", "1", memory_mb=1024)
    assert result.status == Status.REJECTED and "session_memory_budget_mb" in result.message
