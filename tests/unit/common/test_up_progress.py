"""The phases `agentrl up` shows per service (local_stack._report), from the supervisor's state."""

from agentrl.common import local_stack
from agentrl.common.local_stack import ServiceState, StackState


def phases(state, ready_after, failed=""):
    seen = []
    local_stack._report(
        seen.append, state, ["vllm", "sandbox", "reward"], ready_after, 0.0, failed=failed
    )
    return {row.name: (row.phase, row.restarts) for row in seen[0]}, seen[0]


def state(**statuses):
    services = {
        name: ServiceState(name, "", "", status=status, restarts=1 if status == "restarting" else 0)
        for name, status in statuses.items()
    }
    return StackState(supervisor_pid=1, recipe="", services=services)


def test_before_the_supervisor_writes_its_state_every_service_is_starting():
    found, _ = phases(None, {})
    assert found == {"vllm": ("starting", 0), "sandbox": ("starting", 0), "reward": ("starting", 0)}


def test_vllm_loads_its_model_a_crashed_service_restarts_ready_ones_keep_their_time():
    found, rows = phases(
        state(vllm="running", sandbox="restarting", reward="running"), {"reward": 4.5}
    )
    assert found == {
        "vllm": ("loading model", 0),
        "sandbox": ("restarting", 1),
        "reward": ("ready", 0),
    }
    assert [r.elapsed_s for r in rows if r.name == "reward"] == [4.5]


def test_the_service_up_gives_up_on_is_failed():
    found, _ = phases(state(vllm="running", sandbox="failed", reward="running"), {}, "sandbox")
    assert found["sandbox"] == ("failed", 0)
