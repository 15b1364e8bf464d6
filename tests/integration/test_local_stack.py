"""`agentrl up/status/down`: real services as supervised local processes."""

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from agentrl.common import local_stack
from agentrl.common.config import load_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def stack_config(tmp_path: Path):
    recipe = tmp_path / "stack.yaml"
    recipe.write_text(
        f"run: {{run_id: stack-{os.getpid()}, output_dir: {tmp_path / 'run'}}}\n"
        f"sandbox: {{grpc_port: {free_port()}, http_port: {free_port()}, max_concurrency: 2}}\n"
        f"reward: {{grpc_port: {free_port()}, http_port: {free_port()}, num_verifier_workers: 1}}\n"
    )
    config = load_config(recipe, env={})
    yield config, str(recipe)
    local_stack.down(config)


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return False


def test_up_supervises_restarts_and_down_stops_everything(stack_config):
    config, recipe = stack_config
    state = local_stack.up(config, recipe, ["sandbox", "reward"])
    for service in state.services.values():
        probe = local_stack.probe(service)
        assert probe.grpc_serving and probe.http_ready and probe.in_flight == 0
        assert Path(service.log).is_file()

    # A second `up` for the same run is refused with a pointer to status/down.
    with pytest.raises(local_stack.StackError, match="already up"):
        local_stack.up(config, recipe, ["sandbox"])

    # A crashed service is restarted and serves again.
    crashed = state.services["sandbox"].pid
    os.kill(crashed, signal.SIGKILL)

    def restarted():
        now = local_stack.read_state(config).services["sandbox"]
        return now.restarts == 1 and now.pid != crashed and local_stack.probe(now).grpc_serving

    assert wait_for(restarted), local_stack.read_state(config)
    assert local_stack.read_state(config).services["sandbox"].exit_code == -signal.SIGKILL

    pids = [s.pid for s in local_stack.read_state(config).services.values()]
    assert local_stack.down(config)
    assert not any(local_stack.pid_alive(pid) for pid in pids)
    stopped = local_stack.read_state(config).services.values()
    assert {s.status for s in stopped} == {"stopped"}
    # Each drained on SIGTERM and exited by itself within its stop grace, not SIGKILLed.
    assert {s.name: s.exit_code for s in stopped} == {"sandbox": 0, "reward": 0}
    assert not local_stack.down(config)  # nothing left to stop


def test_a_taken_port_is_named_with_the_setting_to_change(stack_config):
    config, recipe = stack_config
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.reward.http_port))
        squatter.listen()
        with pytest.raises(local_stack.StackError) as info:
            local_stack.up(config, recipe, ["sandbox", "reward"])
    message = str(info.value)
    assert f"port {config.reward.http_port} (reward.http_port)" in message
    assert "AGENTRL__REWARD__HTTP_PORT" in message


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_a_dead_service_takes_its_children_along_and_the_stack_redis_keeps_its_data(tmp_path):
    """Issue #20 items 5 and 6: a service killed with SIGKILL leaves no orphan (the reward
    service's verifier processes stand in for vLLM's EngineCore: same process group); the
    stack's own Redis runs with AOF, comes back after a SIGKILL with what it held."""
    import redis

    redis_port = free_port()
    recipe = tmp_path / "stack.yaml"
    recipe.write_text(
        f"run: {{run_id: faults-{os.getpid()}, output_dir: {tmp_path / 'run'}}}\n"
        f"redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}\n"
        f"reward: {{grpc_port: {free_port()}, http_port: {free_port()}, num_verifier_workers: 1}}\n"
    )
    config = load_config(recipe, env={})
    try:
        state = local_stack.up(config, str(recipe), ["reward"])
        reward_pid = state.services["reward"].pid
        assert wait_for(lambda: len(group_members(reward_pid)) > 1), "no verifier process"
        client = redis.Redis(port=redis_port)
        client.xadd("faults:queued", {"data": b"a task"})
        aof = config.run.output_dir / "redis"
        assert wait_for(lambda: any(b"a task" in f.read_bytes() for f in aof.rglob("*.aof*")))

        os.kill(reward_pid, signal.SIGKILL)

        def restarted():
            now = local_stack.read_state(config).services["reward"]
            return now.restarts == 1 and now.pid != reward_pid and local_stack.probe(now).http_ready

        assert wait_for(restarted), local_stack.read_state(config)
        assert group_members(reward_pid) == []  # the verifier died with its service

        redis_pid = local_stack.read_state(config).redis_pid
        os.kill(redis_pid, signal.SIGKILL)

        def redis_back():
            try:
                return local_stack.read_state(config).redis_pid != redis_pid and client.ping()
            except redis.ConnectionError:
                return False

        assert wait_for(redis_back)
        assert [fields for _id, fields in client.xrange("faults:queued")] == [{b"data": b"a task"}]
        client.close()
        groups = [s.pid for s in local_stack.read_state(config).services.values()]
        redis_pid = local_stack.read_state(config).redis_pid
        assert local_stack.down(config)
        assert not any(group_members(pid) for pid in groups)
        assert not local_stack.pid_alive(redis_pid)
    finally:
        local_stack.down(config)
