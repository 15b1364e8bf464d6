"""The sandbox service as the Kubernetes manifests deploy it: not root (uid 10001), so no
cgroups, no tmpfs mounts and no setpriv. A real service runs as that user; /readyz says which
limits hold and which do not, a fork bomb in one run leaves another client's print(1) working
(the per-run process limit lives in the run's own user namespace), and nothing of the run
survives it."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest

UID = 10001
SERVER = """
import sys
from prometheus_client import CollectorRegistry
from agentrl.common.config import SandboxConfig
from agentrl.common.http import serve_in_thread
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.http_api import create_sandbox_app
config = SandboxConfig(max_concurrency=4, queue_size=64, work_root=sys.argv[1], max_processes=32)
registry = CollectorRegistry()
sandbox = Sandbox(config, registry=registry)
http = serve_in_thread(create_sandbox_app(sandbox, token=None, registry=registry))
print(http.url, flush=True)
sys.stdin.read()  # serve until the test closes stdin
http.stop()
sandbox.close()
"""
FORK_BOMB = (
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="switching to an unprivileged uid needs root (CI runs as root)",
    ),
]


def processes_of(uid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-u", str(uid), "-o", "pid="], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in out.stdout.split()]


@pytest.fixture(scope="module")
def service():
    work_root = tempfile.mkdtemp(prefix="agentrl-nonroot-", dir="/tmp")
    os.chmod(work_root, 0o755)
    os.chown(work_root, UID, UID)
    argv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"]
    server = subprocess.Popen(
        [*argv, sys.executable, "-c", SERVER, work_root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "HOME": work_root},
        text=True,
    )
    url = server.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), "the non-root service did not start"
    with httpx.Client(base_url=url, timeout=60) as client:
        client.server_pid = server.pid
        yield client
    server.stdin.close()
    server.wait(30)
    shutil.rmtree(work_root, ignore_errors=True)


def run(client, code, **fields):
    return client.post("/run_code", json={"code": code, "language": "python", **fields}).json()


def test_readyz_says_which_limits_hold(service):
    limits = service.get("/readyz").json()["limits"]
    assert {name: limit["enforced"] for name, limit in limits.items()} == {
        "wall_clock": True,
        "output": True,
        "memory": False,
        "processes": True,
        "cpu": False,
        "disk": False,
        "syscalls": True,
        "network": True,
    }
    assert "RLIMIT_AS" in limits["memory"]["how"] and "user namespace" in limits["processes"]["how"]


def test_a_fork_bomb_leaves_other_clients_working(service):
    bomb: dict = {}
    thread = threading.Thread(
        target=lambda: bomb.update(run(service, FORK_BOMB, run_timeout=4)), daemon=True
    )
    thread.start()
    time.sleep(1)  # let it reach its process limit
    answers = [run(service, "print(1)") for _ in range(5)]
    thread.join(60)
    assert [a["run_result"]["stdout"] for a in answers] == ["1\n"] * 5, answers
    assert bomb["run_result"]["status"] == "TimeLimitExceeded"
    deadline = time.monotonic() + 10
    while set(processes_of(UID)) - {service.server_pid} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(processes_of(UID)) == {service.server_pid}


def test_one_process_cannot_take_more_than_its_memory(service):
    answer = run(service, "x = bytearray(2 << 30)\nprint('allocated')", memory_limit_MB=256)
    assert answer["status"] == "Failed" and "MemoryError" in answer["run_result"]["stderr"]
