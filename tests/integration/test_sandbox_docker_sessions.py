"""Sessions on the real docker backend (a real engine, the project's image): state persists
across the calls of one session, sessions are isolated from each other (a container each), a
call's background processes end when it returns, a timeout or output overflow kills the
session and the next call says its state is gone, a closed session's container is removed and
the pool is back to its size, and the session budget refuses a session beyond `max_sessions`
when every other one is running a call. The hostile battery (test_sandbox_hostile.py) runs the
session attacks against a docker service over gRPC.

The Docker engine is started by `AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh`; a missing one
fails these tests, it never skips them (the image: see test_sandbox_docker.py).
"""

import asyncio
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sandbox_service_helpers import serve_sandbox

from agentrl.common.agent.tools import SandboxTool
from agentrl.common.config import SandboxConfig
from agentrl.common.tool_formats import ParsedCall
from agentrl.proto.core.v1 import trajectory_pb2
from agentrl.sandbox.client import SandboxClient
from agentrl.sandbox.docker_pool import OWNER_LABEL
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
POOL_SIZE = 2
# Creating or removing a container on vfs copies or deletes the whole image (~10-20 s on a
# loaded host); a session or run waits up to this long for one.
QUEUE_TIMEOUT_S = 240.0
# Prints the id of the container the cell runs in (its cgroup path carries it).
WHERE = "print(open('/proc/self/cgroup').read())"
# A sleep length no other process on the host uses, so `ps` finds exactly the test's.
MARKER = "4242.61"


@pytest.fixture(scope="module")
def sandbox():
    subprocess.run(["bash", str(REPO / "services/sandbox/image/build.sh")], check=True)
    config = SandboxConfig(
        backend="docker",
        docker_image="agentrl-sandbox:latest",
        pool_size=POOL_SIZE,
        queue_timeout_s=QUEUE_TIMEOUT_S,
        max_concurrency=4,
        disk_mb=16,
        max_processes=64,
        max_output_bytes=64 * 1024,
        max_sessions=2,
    )
    sandbox = Sandbox(config, registry=CollectorRegistry())
    # Closing a session waits for its container's removal (tens of seconds on a loaded vfs
    # host); the tests but the one on removal let it go on in the background.
    sandbox.sessions.close_wait_s = 0
    yield sandbox
    sandbox.close()
    assert containers(sandbox.backend.instance) == set()


def run(sandbox, code, session_id, **fields):
    return sandbox.execute(ExecutionRequest(code=code, session_id=session_id, **fields))


def container_of(result):
    return re.search(r"[0-9a-f]{64}", result.stdout).group(0)


def containers(instance):
    """Ids of every container of this sandbox instance, whatever its state."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={OWNER_LABEL}={instance}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def running(marker=MARKER):
    out = subprocess.run(
        ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if marker in line and not line.startswith("Z")]


def wait_pool_full(sandbox):
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while sandbox.backend.pool_size() < POOL_SIZE:
        assert time.monotonic() < deadline, "the pool did not refill"
        time.sleep(0.1)


def test_state_persists_across_calls(sandbox):
    first = run(
        sandbox,
        "import os, json\nx = 41\nopen('notes.txt', 'w').write('kept')\nos.getuid()",
        "persist",
        files={"in.txt": b"given"},
    )
    assert (first.status, first.stdout, first.backend) == (Status.OK, "65534\n", "docker")
    second = run(
        sandbox,
        "print(x + 1, json.dumps(open('notes.txt').read()), open('in.txt').read())\n"
        "print(input()[::-1])",
        "persist",
        stdin=b"abc\n",
        fetch_files=["notes.txt"],
    )
    assert second.status == Status.OK, second
    assert second.stdout == '42 "kept" given\ncba\n'
    assert second.files == {"notes.txt": b"kept"}
    failed = run(sandbox, "1 / 0", "persist")
    assert failed.status == Status.ERROR and "ZeroDivisionError" in failed.stderr
    assert run(sandbox, "x", "persist").stdout == "41\n"  # an exception keeps the session
    assert sandbox.close_session("persist")


def test_two_sessions_are_isolated(sandbox):
    alice = run(sandbox, f"secret = 'alice-only'\nopen('s.txt', 'w').write(secret)\n{WHERE}", "a")
    bob = run(
        sandbox, f"import os\nprint('secret' in dir(), os.path.exists('s.txt'))\n{WHERE}", "b"
    )
    assert alice.status == bob.status == Status.OK, (alice, bob)
    assert bob.stdout.startswith("False False\n")
    assert container_of(alice) != container_of(bob)
    # Neither is a container of the pool: a one-shot run never lands in one, and a session
    # never takes one of the pool.
    one_shot = sandbox.execute(ExecutionRequest(code=WHERE))
    assert container_of(one_shot) not in (container_of(alice), container_of(bob))
    assert sandbox.close_session("a") and sandbox.close_session("b")


def test_a_calls_background_processes_end_when_it_returns(sandbox):
    daemon = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{MARKER}'])\n    os._exit(0)\nos.wait()\n"
        f"os.system('sleep {MARKER} &')\nkept = 1"
    )
    result = run(sandbox, daemon, "bg")
    assert result.status == Status.OK, result
    assert "ended 2 background process(es)" in result.message, result.message
    assert running() == []
    after = run(sandbox, "print(kept)", "bg")  # the variables stay
    assert (after.stdout, after.message) == ("1\n", "")
    assert sandbox.close_session("bg")


@pytest.mark.slow
def test_a_timeout_or_overflow_kills_the_session_and_the_next_call_says_so(sandbox):
    run(sandbox, f"x = 1\n{WHERE}", "t")
    first = container_of(run(sandbox, WHERE, "t"))
    timed_out = run(
        sandbox, f"import os\nos.system('sleep {MARKER} &')\nwhile True: pass", "t", timeout_s=1
    )
    assert timed_out.status == Status.TIMEOUT
    assert "session state was lost" in timed_out.message
    assert running() == []
    after = run(sandbox, f"print('x' in dir())\n{WHERE}", "t")
    assert after.status == Status.OK and after.stdout.startswith("False\n"), after
    assert "the previous one was stopped" in after.message
    assert container_of(after) != first  # a fresh container: nothing of the old one is left
    flood = run(sandbox, "y = 2\nprint('x' * (1 << 20))", "t")
    assert (flood.status, flood.stdout_truncated) == (Status.OUTPUT_LIMIT, True)
    assert "session state was lost" in flood.message
    assert run(sandbox, "print('y' in dir())", "t").stdout == "False\n"
    crash = run(sandbox, "import os\nos._exit(3)", "t")
    assert "crashed" in crash.message and "state was lost" in crash.message, crash
    assert sandbox.close_session("t")


@pytest.mark.slow
def test_a_closed_session_s_container_is_removed_and_the_pool_is_back_to_size(sandbox):
    wait_pool_full(sandbox)
    pool = containers(sandbox.backend.instance)
    mine = container_of(run(sandbox, WHERE, "closing"))
    assert mine in containers(sandbox.backend.instance)
    assert sandbox.sessions.count() == 1
    sandbox.sessions.close_wait_s = QUEUE_TIMEOUT_S
    try:
        assert sandbox.close_session("closing")  # returns once the container is removed
    finally:
        sandbox.sessions.close_wait_s = 0
    assert mine not in containers(sandbox.backend.instance)
    assert sandbox.sessions.count() == 0 and not sandbox.close_session("closing")
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while len(now := containers(sandbox.backend.instance)) > POOL_SIZE:  # earlier sessions'
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert mine not in now and sandbox.backend.pool_size() == POOL_SIZE, (pool, now)
    fresh = run(sandbox, "print('x' in dir())", "closing")  # the same id: a new session
    assert fresh.stdout == "False\n" and fresh.message == ""
    assert sandbox.close_session("closing")


@pytest.mark.slow
def test_sessions_beyond_max_sessions_all_busy_are_refused(sandbox):
    """max_sessions=2: with two sessions each running a call, a third is refused saying
    so; once they are idle, a new one evicts the least recently used, which is told why."""
    started = threading.Barrier(3)
    results = {}

    def busy(name):
        run(sandbox, "1", name)  # the session exists before the barrier
        started.wait()
        results[name] = run(sandbox, "import time\ntime.sleep(4)", name)

    threads = [threading.Thread(target=busy, args=(name,)) for name in ("s1", "s2")]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(1)  # both calls are running
    refused = run(sandbox, "1", "s3")
    for thread in threads:
        thread.join()
    assert refused.status == Status.REJECTED
    assert "all running a call" in refused.message and "max_sessions=2" in refused.message
    assert [results[name].status for name in ("s1", "s2")] == [Status.OK, Status.OK]
    assert run(sandbox, "1", "s2").status == Status.OK  # s1 is now the least recently used
    assert run(sandbox, "z = 3", "s3").status == Status.OK  # evicts s1, the least recent
    evicted = run(sandbox, "print('x' in dir())", "s1")
    assert "evicted (max_sessions)" in evicted.message, evicted.message
    for name in ("s1", "s2", "s3"):
        sandbox.close_session(name)


def test_links_a_session_planted_are_never_followed(sandbox, tmp_path):
    target = tmp_path / "host.txt"
    target.write_text("host")
    planted = run(sandbox, f"import os\nos.symlink({str(target)!r}, 'in.txt')", "links")
    assert planted.status == Status.OK
    write = run(sandbox, "1", "links", files={"in.txt": b"pwned"})
    assert write.status == Status.REJECTED
    fetch = run(sandbox, "1", "links", fetch_files=["in.txt"])
    assert fetch.status == Status.OK and fetch.files == {}
    assert target.read_text() == "host"
    assert sandbox.close_session("links")


def test_a_memory_bomb_is_oom_and_the_session_starts_over(sandbox):
    run(sandbox, "kept = 1", "oom", memory_mb=128)  # the first call's limit is the session's
    bomb = run(sandbox, "blocks = []\nwhile True: blocks.append(bytearray(1 << 24))", "oom")
    assert bomb.status == Status.OOM, bomb
    assert "128 MB memory limit" in bomb.message and "state was lost" in bomb.message
    after = run(sandbox, "print('kept' in dir())", "oom")
    assert after.stdout == "False\n" and "previous one was stopped" in after.message
    assert sandbox.close_session("oom")


def test_an_episode_s_calls_share_a_session_through_the_rollout_s_grpc_tool(sandbox):
    """The rollout's path: SandboxTool over SandboxClient (gRPC) with the episode's session
    id; the second call sees the first's variables; the episode's end closes the session."""
    with (
        serve_sandbox(sandbox, max_workers=4) as server,
        SandboxClient(server.address, token=None) as client,
    ):
        tool = SandboxTool(client, timeout_s=10.0)
        first = asyncio.run(tool.run(ParsedCall("python", "answer = 6 * 7"), "episode-1"))
        second = asyncio.run(tool.run(ParsedCall("python", "print(answer)"), "episode-1"))
        other = asyncio.run(tool.run(ParsedCall("python", "print(answer)"), "episode-2"))
        ok = trajectory_pb2.TOOL_CALL_STATUS_OK
        assert (first.status, second.status, second.output) == (ok, ok, "42\n"), second
        assert other.status != ok and "NameError" in other.output
        asyncio.run(tool.close_session("episode-1"))
        asyncio.run(tool.close_session("episode-2"))
        assert sandbox.sessions.count() == 0
