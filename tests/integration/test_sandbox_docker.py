"""Hostile programs against the real docker backend (a real engine, the project's image): each
ends with the right status, the pool stays usable, recycles what it must, and nothing survives.
These drive the backend in this process (exact statuses, limits, which container ran what);
the attack classes shared with bwrap (fork bomb, network, environment secrets, ... with a
concurrent client and the host checks) run against a docker service in test_sandbox_hostile.py.

The Docker engine is started by `AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh`; a missing one
fails these tests, it never skips them. The session fixture runs services/sandbox/image/build.sh:
~0.2 s when the image is current, minutes from nothing (debootstrap + import + a build
that installs g++ and the scientific Python stack, on vfs).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from docker_sandbox_helpers import SANDBOX_UID, left_in_container
from prometheus_client import CollectorRegistry

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.client import SandboxClient
from agentrl.sandbox.docker_pool import EXECUTOR_SOURCE, OWNER_LABEL
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
# A recycled container is re-created in the background; on vfs that copies the whole image
# (~840 MB with the runtime, ~10 s on a loaded host, more while several refill at once), so a
# run waits up to this long for one instead of the default 30 s.
QUEUE_TIMEOUT_S = 240.0
# Prints the id of the container the program runs in (its cgroup path carries it).
WHERE = "print(open('/proc/self/cgroup').read())"


@pytest.fixture(scope="session")
def sandbox_image():
    subprocess.run(["bash", str(REPO / "services/sandbox/image/build.sh")], check=True)
    return "agentrl-sandbox:latest"


@pytest.fixture(scope="module")
def sandbox(sandbox_image):
    config = SandboxConfig(
        backend="docker",
        docker_image=sandbox_image,
        pool_size=4,
        queue_timeout_s=QUEUE_TIMEOUT_S,
        max_concurrency=8,
        queue_size=400,
        disk_mb=16,
        max_processes=64,
        max_output_bytes=64 * 1024,
        runs_per_container=1000,
    )
    sandbox = Sandbox(config, registry=CollectorRegistry())
    yield sandbox
    sandbox.close()


def run(sandbox, code, **fields):
    return sandbox.execute(ExecutionRequest(code=code, **fields))


def container_of(result):
    return re.search(r"[0-9a-f]{64}", result.stdout).group(0)


def recycles(sandbox, reason):
    value = sandbox.metrics.recycles.labels(backend="docker", reason=reason)._value.get()
    return int(value)


def leftovers(sandbox, marker="sleep 4242.1"):
    """Live processes a finished run left: any of the sandbox uid in a pool container other
    than the warm interpreters, the executor's children before their execve, and `runc init`
    (which starts the next one), or any host process whose command line carries `marker`.
    Containers being removed, and processes already exiting (zombies), are skipped."""
    stray = []
    for container in list(sandbox.backend.pool._live.values()):
        try:
            stray += left_in_container(container.cgroup)
        except OSError:
            continue
    out = subprocess.run(
        ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return stray + [
        line
        for line in out.splitlines()
        if marker in line and not line.startswith("Z") and "ps -eo" not in line
    ]


def assert_healthy(sandbox):
    result = run(sandbox, "print(6 * 7)")
    assert (result.status, result.stdout) == (Status.OK, "42\n")


def test_ok_error_stdin_files_and_usage_reported(sandbox):
    result = run(
        sandbox,
        "import os\nprint(input()[::-1], os.getuid())\n"
        "open('out/r.txt','w').write(open('out/in.txt').read() + 'x')",
        stdin=b"abc\n",
        files={"out/in.txt": b"1"},
        fetch_files=["out/r.txt", "nope"],
    )
    assert result.status == Status.OK and result.stdout == f"cba {SANDBOX_UID}\n"
    assert result.files == {"out/r.txt": b"1x"} and result.backend == "docker"
    assert result.wall_time_s > 0 and result.cpu_time_s > 0 and result.peak_memory_mb > 1
    failed = run(sandbox, "import sys; sys.exit(3)")
    assert (failed.status, failed.exit_code) == (Status.ERROR, 3)
    raised = run(sandbox, "1/0")
    assert raised.status == Status.ERROR and "ZeroDivisionError" in raised.stderr
    assert 'File "/work/main.py", line 1' in raised.stderr


@pytest.mark.slow
def test_the_containers_weigh_as_the_programs_that_run_at_once(sandbox):
    """Under the instance's own cgroup, weighted like as many processes as programs can run at
    once (a container each, pool and sessions, up to max_concurrency), not under Docker's
    parent, where all containers together weigh as one process on a busy host."""
    parent = sandbox.backend.cgroup_parent.paths["cpu"]
    config = sandbox.config
    at_once = min(config.max_concurrency, config.pool_size + config.max_sessions)
    assert at_once == 8 > config.pool_size  # sessions' containers count too
    assert int((parent / "cpu.shares").read_text()) == 1024 * at_once
    live = list(sandbox.backend.pool._live.values())
    assert live and all(container.cgroup.paths["cpu"].parent == parent for container in live)


def test_memory_bomb_is_oom_and_recycled(sandbox):
    before = recycles(sandbox, "oom")
    result = run(
        sandbox, "x = []\nwhile True: x.append(bytearray(10**7))", memory_mb=128, timeout_s=20
    )
    assert result.status == Status.OOM and "128 MB" in result.message
    assert result.peak_memory_mb <= 130
    assert recycles(sandbox, "oom") == before + 1


def test_infinite_loop_times_out_at_the_limit(sandbox):
    result = run(sandbox, "while True: pass", timeout_s=1)
    assert result.status == Status.TIMEOUT and 1.0 <= result.wall_time_s < 2.0
    assert result.cpu_time_s > 0.1  # a busy loop; less than 1 s when the host is contended


def test_setsid_child_dies_with_the_program_and_on_timeout(sandbox):
    code = (
        "import subprocess\nsubprocess.Popen(['sleep', '4242.17'], start_new_session=True)\n"
        "print('spawned')"
    )
    result = run(sandbox, code)
    assert result.status == Status.OK and result.stdout == "spawned\n"
    assert result.wall_time_s < 2  # the child held stdout: had it lived, the exec would hang
    assert leftovers(sandbox) == []
    code = (
        "import subprocess, time\nsubprocess.Popen(['sleep', '4242.18'], start_new_session=True)"
        "\ntime.sleep(100)"
    )
    assert run(sandbox, code, timeout_s=1).status == Status.TIMEOUT
    assert leftovers(sandbox) == []


def test_100_mb_of_output_is_capped_and_flagged(sandbox):
    result = run(
        sandbox,
        "import sys\nsys.stdout.write('x' * (100 * 1024 * 1024))",
        timeout_s=20,
        memory_mb=512,
    )
    assert result.status == Status.OUTPUT_LIMIT and result.stdout_truncated
    assert result.stdout == "x" * (64 * 1024)
    assert result.wall_time_s < 10
    assert leftovers(sandbox) == []


def test_writes_outside_the_work_dir_fail_or_recycle(sandbox):
    for path in ("/usr/evil", "/etc/evil", "/evil", "/proc/sys/kernel/hostname"):
        result = run(sandbox, f"open({path!r}, 'w').write('x')")
        assert result.status == Status.ERROR, path
    assert not os.path.exists("/usr/evil") and not os.path.exists("/evil")
    for path in ("/tmp/planted", "/dev/shm/planted"):
        before = recycles(sandbox, "write_outside_workdir")
        wrote = run(sandbox, f"open({path!r}, 'w').write('x')\n{WHERE}")
        assert wrote.status == Status.OK
        assert recycles(sandbox, "write_outside_workdir") == before + 1
        later = [
            run(sandbox, f"import os\nprint(os.path.exists({path!r}))\n{WHERE}") for _ in range(6)
        ]
        assert all(r.stdout.startswith("False\n") for r in later)
        assert container_of(wrote) not in {container_of(r) for r in later}


def test_filling_the_disk_hits_the_work_dir_limit(sandbox):
    code = "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20)); i += 1"
    result = run(sandbox, code, timeout_s=10)
    assert result.status == Status.ERROR and "No space left" in result.stderr
    for _ in range(sandbox.config.pool_size):  # whichever container runs next: a fresh /work
        assert run(sandbox, "import os; print(os.listdir('.'))").stdout == "['main.py']\n"


def test_killing_its_parent_changes_nothing(sandbox):
    code = (
        "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nprint('alive')"
    )
    result = run(sandbox, code)
    assert result.status in (Status.OK, Status.ERROR)
    assert leftovers(sandbox) == []
    assert_healthy(sandbox)


def test_fetch_files_never_follow_symlinks(sandbox):
    code = "import os\nos.symlink('/etc/hostname', 'link')\nos.mkfifo('fifo')"
    result = run(sandbox, code, fetch_files=["link", "fifo"])
    assert result.status == Status.OK and result.files == {}


def test_unknown_language_and_bash_sessions_are_rejected(sandbox):
    assert run(sandbox, "x", language="cobol").status == Status.REJECTED
    session = run(sandbox, "x=1", language="bash", session_id="trajectory-1")
    assert session.status == Status.REJECTED and "sessions run python" in session.message


def test_bash_runs_cold(sandbox):
    result = run(sandbox, "echo $((6*7)); exit 4", language="bash")
    assert (result.status, result.stdout, result.exit_code) == (Status.ERROR, "42\n", 4)


@pytest.mark.slow
def test_60_concurrent_executions_none_lost(sandbox):
    with ThreadPoolExecutor(60) as pool:
        results = list(
            pool.map(lambda i: run(sandbox, f"print({i})", request_id=str(i)), range(60))
        )
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(60)]
    assert all(r.status == Status.OK and r.request_id == str(i) for i, r in enumerate(results))
    assert leftovers(sandbox) == []


@pytest.mark.slow
def test_pool_recycles_after_n_runs_and_after_a_timeout_then_refills(sandbox_image):
    config = SandboxConfig(
        backend="docker",
        docker_image=sandbox_image,
        pool_size=1,
        max_concurrency=1,
        runs_per_container=3,
        queue_timeout_s=QUEUE_TIMEOUT_S,
    )
    small = Sandbox(config, registry=CollectorRegistry())
    try:
        first = [container_of(run(small, WHERE)) for _ in range(4)]
        assert first[0] == first[1] == first[2] != first[3]
        assert run(small, "while True: pass", timeout_s=0.5).status == Status.TIMEOUT
        after = container_of(run(small, WHERE))
        assert after != first[3]
        assert recycles(small, "runs_per_container") == 1 and recycles(small, "timeout") == 1
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        while small.backend.pool_size() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert small.backend.pool_size() == 1 and small.ready()
    finally:
        small.close()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_grpc_service_with_docker_backend(sandbox_image):
    grpc_port, http_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "AGENTRL__SANDBOX__BACKEND": "docker",
        "AGENTRL__SANDBOX__POOL_SIZE": "2",
        "AGENTRL__SANDBOX__MAX_CONCURRENCY": "2",
        "AGENTRL__SANDBOX__GRPC_PORT": str(grpc_port),
        "AGENTRL__SANDBOX__HTTP_PORT": str(http_port),
    }
    code = (
        "from agentrl.common.config import load_config\n"
        "from agentrl.sandbox.main import main\nmain(load_config())"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    http = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{http}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with SandboxClient(f"127.0.0.1:{grpc_port}", token=None) as client:
            result = client.execute("print(input())", stdin=b"hello\n", request_id="r1")
            assert (result.status, result.stdout, result.backend) == (
                Status.OK,
                "hello\n",
                "docker",
            )
            for port in (grpc_port, http_port):
                reach = client.execute(
                    f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)"
                )
                assert reach.status == Status.ERROR and "ConnectionRefused" in reach.stderr
            # A session through the real service: state kept between calls, its container
            # removed on close (the owner check below finds none left).
            assert client.execute("x = 41", session_id="s1").status == Status.OK
            session = client.execute("print(x + 1)", session_id="s1")
            assert (session.status, session.stdout) == (Status.OK, "42\n"), session
            client.close_session("s1")
        fusion = httpx.post(
            f"{http}/run_code", json={"code": "print(2)", "language": "python"}, timeout=30
        ).json()
        assert fusion["status"] == "Success" and fusion["run_result"]["stdout"] == "2\n"
        metrics = httpx.get(f"{http}/metrics").text
        assert 'agentrl_sandbox_executions_total{backend="docker",status="ok"}' in metrics
        assert 'agentrl_sandbox_pool_size_sandboxes{backend="docker"}' in metrics
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        owners = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                f"label={OWNER_LABEL}",
                "--format",
                f'{{{{.Label "{OWNER_LABEL}"}}}}',
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert not [owner for owner in owners if owner.startswith(f"{proc.pid}-")]
    finally:
        if proc.poll() is None:
            proc.kill()


SYSV_CREATE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0x4242, 4096, 0o1666)  # IPC_CREAT | 0666
ctypes.memmove(libc.shmat(shmid, None, 0), b"secret", 6)
print(shmid)
"""
SYSV_LOOK = "import ctypes\nprint(ctypes.CDLL(None).shmget(0x4242, 0, 0))"


@pytest.mark.parametrize("parent_kill", [False, True], ids=["normal exit", "kills its parent"])
def test_a_sysv_segment_is_never_seen_by_a_later_run(sandbox, parent_kill):
    """The executor removes what a run made once the program exits; the program cannot kill
    the executor first (another uid). Eight later runs (the pool has four containers, handed
    out in turn) never find the segment."""
    kill = (
        "\nimport os\ntry:\n    os.kill(os.getppid(), 9)\nexcept PermissionError:\n"
        "    print('denied')"
        if parent_kill
        else ""
    )
    made = run(sandbox, SYSV_CREATE + kill)
    assert made.status == Status.OK and int(made.stdout.split()[0]) >= 0, made
    assert made.stdout.endswith("denied\n") == parent_kill
    for _ in range(8):
        look = run(sandbox, SYSV_LOOK)
        assert (look.status, look.stdout) == (Status.OK, "-1\n"), look


def executor_of(container):
    """The host pid of `container`'s executor (uid 0, started with the executor's source)."""
    for pid in container.cgroup.pids(uid=0):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if EXECUTOR_SOURCE.encode()[:60] in cmdline:
            return pid
    raise AssertionError(f"no executor in {container.name}")


def wait_gone(pid, timeout_s=60.0):
    """Until `pid` has exited (gone, or a zombie: its fds are closed either way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still runs after {timeout_s} s")


def test_an_executor_killed_during_a_run_fails_it_and_recycles_the_container(sandbox):
    before = recycles(sandbox, "executor_died")
    code = "import os\nos.execvp('sleep', ['sleep', '4242.3'])"
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(run, sandbox, code, timeout_s=120)
        deadline = time.monotonic() + 120
        host = None
        while host is None and time.monotonic() < deadline:
            for container in list(sandbox.backend.pool._live.values()):
                try:  # a container being removed has no cgroups any more
                    for pid in container.cgroup.pids(uid=SANDBOX_UID):
                        if b"4242.3" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            host = container
                except OSError:
                    pass
            time.sleep(0.05)
        assert host is not None, "the program never started"
        os.kill(executor_of(host), 9)
        result = pending.result(timeout=120)
    assert result.status == Status.SANDBOX_ERROR and "executor died" in result.message, result
    assert recycles(sandbox, "executor_died") == before + 1
    assert leftovers(sandbox, marker="sleep 4242.3") == []
    assert_healthy(sandbox)


def test_an_executor_dead_between_runs_is_never_handed_out(sandbox):
    """A ready container whose executor died is recycled when taken, not given a request."""
    before = recycles(sandbox, "executor_died")
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while sandbox.backend.pool_size() < sandbox.config.pool_size:
        assert time.monotonic() < deadline, "the pool never refilled"
        time.sleep(0.1)
    idle = sandbox.backend.pool._ready.queue[0]
    executor = executor_of(idle)
    os.kill(executor, 9)
    wait_gone(executor)
    for _ in range(2 * sandbox.config.pool_size):  # every container is taken at least once
        assert_healthy(sandbox)
    assert recycles(sandbox, "executor_died") == before + 1


# Every way a program might reach the executor: its socket directory and socket, its process
# (signals, /proc entries, ptrace, rlimits), and any descriptor inherited from it.
REACH_EXECUTOR = """
import ctypes, json, os, resource, socket
tried = {}
def attempt(name, action):
    try:
        action()
        tried[name] = "allowed"
    except OSError as error:
        tried[name] = type(error).__name__
attempt("list socket dir", lambda: os.listdir("/run/agentrl"))
def dial():
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect("/run/agentrl/executor.sock")
attempt("connect", dial)
roots = [
    int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != 1
    and os.stat(f"/proc/{p}").st_uid == 0
]
print("roots", len(roots))
executor = roots[0]
attempt("signal", lambda: os.kill(executor, 19))
attempt("read mem", lambda: open(f"/proc/{executor}/mem", "rb").read(1))
attempt("list fds", lambda: os.listdir(f"/proc/{executor}/fd"))
attempt("environ", lambda: open(f"/proc/{executor}/environ", "rb").read())
attempt("prlimit", lambda: resource.prlimit(executor, resource.RLIMIT_NOFILE, (1, 1)))
libc = ctypes.CDLL(None, use_errno=True)
def trace():
    if libc.ptrace(16, executor, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
attempt("ptrace", trace)
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # the listing's own fd, closed by now
        pass
tried["inherited sockets"] = str(sum(link.startswith("socket:") for link in links))
tried["uids"] = str(os.getresuid())
print(json.dumps(tried))
"""


def test_a_program_cannot_reach_or_tamper_with_the_executor(sandbox):
    before = {reason: recycles(sandbox, reason) for reason in ("executor_died", "sandbox_error")}
    result = run(sandbox, REACH_EXECUTOR)
    assert result.status == Status.OK, result
    lines = result.stdout.splitlines()
    assert lines[0] == "roots 1", result.stdout  # the executor is the only other root process
    tried = json.loads(lines[1])
    assert tried.pop("inherited sockets") == "0"
    assert tried.pop("uids") == str((SANDBOX_UID,) * 3)
    assert tried == {
        "list socket dir": "PermissionError",
        "connect": "PermissionError",
        "signal": "PermissionError",
        "read mem": "PermissionError",
        "list fds": "PermissionError",
        "environ": "PermissionError",
        "prlimit": "PermissionError",
        "ptrace": "PermissionError",
    }, tried
    for _ in range(2 * sandbox.config.pool_size):
        assert_healthy(sandbox)
    assert {reason: recycles(sandbox, reason) for reason in before} == before


def test_the_image_runs_numpy_and_cpp(sandbox):
    science = run(
        sandbox,
        "import numpy, scipy, sympy, pandas\nprint(int(numpy.arange(4).sum()))",
        memory_mb=1024,
        timeout_s=30,
    )
    assert (science.status, science.stdout) == (Status.OK, "6\n"), science
    cpp = "#include <iostream>\nint main(){int n; std::cin >> n; std::cout << n * 2;}"
    ok = run(sandbox, cpp, language="cpp", stdin=b"21", compile_timeout_s=60)
    assert (ok.status, ok.stdout, ok.compile_result.status) == (Status.OK, "42", Status.OK), ok
    bad = run(sandbox, "int main(){ return x; }", language="cpp", compile_timeout_s=60)
    assert bad.status == Status.ERROR and bad.compile_result.exit_code == 1
    assert "not declared" in bad.stderr
    crash = run(sandbox, "int main(){ int *p = nullptr; return *p; }", language="cpp")
    assert crash.status == Status.ERROR and crash.compile_result.status == Status.OK
    loop = run(sandbox, "int main(){ for(;;); }", language="cpp", timeout_s=1)
    assert loop.status == Status.TIMEOUT and loop.compile_result.status == Status.OK
    slow = run(
        sandbox, "#include <bits/stdc++.h>\nint main(){}", language="cpp", compile_timeout_s=0.05
    )
    assert slow.status == Status.TIMEOUT and slow.compile_result.status == Status.TIMEOUT
