"""A hostile battery against a real sandbox service, for each backend and mode it deploys in:
bwrap as `root` (cgroups, tmpfs, setpriv) and as `non-root` (uid 10001 as the Kubernetes
manifests run it: no cgroups, no mounts), and docker as root (the only mode it has; the last
test checks that it refuses to start as uid 10001, saying why). The service is
`agentrl.sandbox.main` in its own process, reached over HTTP (SandboxFusion's /run_code) and
gRPC (sessions).

One list of attack classes (CASES) runs against every target; where the right outcome differs
by backend, the case states both. Each runs while another client sends `print(1)`; after each:
that client got its answer, the host is unchanged (a sentinel directory outside the sandbox
keeps its files and contents, no file appeared where a program tried to write), nothing the
attack started is left running (each attack's processes carry a marker on their command line)
and /readyz is 200. On docker also: no process of the sandbox uid is left in any container of
the service but the next warm interpreter, the containers the attack contaminated were recycled
(the recycles counter of /metrics moved by exactly the reasons the case names) and removed, and
after the battery the service owns exactly `pool_size` containers, all running (none stray),
and none once it stopped (a closed session's container included).

Non-root mode has no cgroups: memory and CPU per run are sampled there (a memory bomb may end
as MemoryError or `oom`), disk is the tmpfs bwrap mounts in the run's namespace. The docker
target needs the engine and the image (services/sandbox/image/build.sh, run by the fixture;
~0.2 s when the image is current) and carries the `docker` marker.
"""

import ast
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from docker_sandbox_helpers import left_in_container
from prometheus_client.parser import text_string_to_metric_families

from agentrl.sandbox.client import SandboxClient
from agentrl.sandbox.interface import Status

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NON_ROOT_UID = 10001
MARKER = "4242.77"  # in the command line of every process an attack leaves behind
SECRET = "hostile-secret-do-not-leak"
SERVE = "from agentrl.common.config import load_config\nfrom agentrl.sandbox.main import main\nmain(load_config())"
DOCKER_POOL_SIZE = 4
# A recycled container is re-created in the background: on vfs that copies the whole image
# (~840 MB, ~10 s on a loaded host, more while several refill at once).
DOCKER_REFILL_S = 240.0
# What the service answers a session request on a backend without sessions.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """`agentrl.sandbox.main` in a process of its own: bwrap as root or as NON_ROOT_UID, or
    docker (as root)."""

    def __init__(self, backend: str, mode: str) -> None:
        self.backend, self.mode = backend, mode
        self.root = Path(tempfile.mkdtemp(prefix="agentrl-hostile-", dir="/tmp"))
        self.root.chmod(0o755)
        self.work_root = self.root / "work"
        self.work_root.mkdir()
        self.sentinel = self.root / "host"  # stands for the host's files
        self.sentinel.mkdir()
        (self.sentinel / "passwd").write_text("root:x:0:0\n")
        if mode == "non-root":
            os.chown(self.work_root, NON_ROOT_UID, NON_ROOT_UID)
        self.http_port, self.grpc_port = free_port(), free_port()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.work_root),
            "AGENTRL_HOSTILE_SECRET": SECRET,
            "AGENTRL__SANDBOX__HTTP_PORT": str(self.http_port),
            "AGENTRL__SANDBOX__GRPC_PORT": str(self.grpc_port),
            "AGENTRL__SANDBOX__WORK_ROOT": str(self.work_root),
            "AGENTRL__SANDBOX__MAX_CONCURRENCY": "4",
            "AGENTRL__SANDBOX__QUEUE_SIZE": "64",
            "AGENTRL__SANDBOX__DISK_MB": "16",
            "AGENTRL__SANDBOX__MAX_PROCESSES": "32",
            "AGENTRL__SANDBOX__MAX_REQUEST_BYTES": str(1 << 20),
            "AGENTRL__SANDBOX__MAX_TIMEOUT_S": "10",
        }
        startup_s = 60.0
        if backend == "docker":
            subprocess.run(["bash", str(REPO / "services/sandbox/image/build.sh")], check=True)
            env |= {
                "AGENTRL__SANDBOX__BACKEND": "docker",
                "AGENTRL__SANDBOX__POOL_SIZE": str(DOCKER_POOL_SIZE),
                "AGENTRL__SANDBOX__RUNS_PER_CONTAINER": "1000",  # recycles come from attacks
                "AGENTRL__SANDBOX__QUEUE_TIMEOUT_S": str(DOCKER_REFILL_S),
            }
            startup_s = DOCKER_REFILL_S
        argv = [sys.executable, "-c", SERVE]
        if mode == "non-root":
            uid = NON_ROOT_UID
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
        self.process = subprocess.Popen(argv, env=env)
        self.url = f"http://127.0.0.1:{self.http_port}"
        # On docker a run may wait for a recycled container's replacement (queue_timeout_s).
        self.timeout_s = DOCKER_REFILL_S + 60 if backend == "docker" else 60
        self.http = httpx.Client(base_url=self.url, timeout=self.timeout_s)
        self.grpc = SandboxClient(f"127.0.0.1:{self.grpc_port}", token=None)
        self.other = httpx.Client(base_url=self.url, timeout=self.timeout_s)  # another client
        try:
            deadline = time.monotonic() + startup_s
            while True:
                try:
                    if self.http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert self.process.poll() is None, "the sandbox service exited at start-up"
                assert time.monotonic() < deadline, "the sandbox service did not become ready"
                time.sleep(0.1)
            if backend == "docker":
                self.wait_pool_full()
        except BaseException:
            self.close(check=False)
            raise

    def run(self, code: str, language: str = "python", **fields) -> dict:
        body = {"code": code, "language": language, "run_timeout": 5, **fields}
        answer = self.http.post("/run_code", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def host_state(self) -> dict[str, str]:
        return {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(self.sentinel.iterdir())
        }

    # -- docker: what the service's pool holds, seen from the host and from /metrics ----------

    def metric(self, name: str) -> dict[str, float]:
        """Samples of metric `name` from /metrics, by their `reason` label ('' without one)."""
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(self.http.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name:
                    found[sample.labels.get("reason", "")] = sample.value
        return found

    def recycles(self) -> dict[str, float]:
        return self.metric("agentrl_sandbox_recycles_total")

    def containers(self) -> list[dict]:
        """`docker inspect` of every container this service owns (its pid starts the owner
        label's value), whatever its state."""
        from agentrl.sandbox.docker_pool import OWNER_LABEL

        names = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={OWNER_LABEL}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not names:
            return []
        # check=False: one removed since `ps` fails the command; the others are still printed.
        out = subprocess.run(
            ["docker", "inspect", *names], capture_output=True, text=True, check=False
        )
        return [
            c
            for c in json.loads(out.stdout or "[]")
            if c["Config"]["Labels"][OWNER_LABEL].startswith(f"{self.process.pid}-")
        ]

    def left_in_containers(self) -> list[str]:
        """Live processes of the sandbox uid left in the service's containers
        (docker_sandbox_helpers.left_in_container)."""
        from agentrl.sandbox.cgroups import Cgroup

        stray = []
        for container in self.containers():
            try:
                cgroup = Cgroup.of_process(container["State"]["Pid"])
                stray += [line[:120] for line in left_in_container(cgroup)] if cgroup else []
            except OSError:  # being removed: its cgroups are going
                continue
        return stray

    def container_ids(self) -> set[str]:
        return {container["Id"] for container in self.containers()}

    def wait_pool_full(self) -> None:
        """Until `pool_size` containers are ready (a recycled one is re-created in the
        background), then: exactly that many containers of this service, all running."""
        deadline = time.monotonic() + DOCKER_REFILL_S
        while self.metric("agentrl_sandbox_pool_size_sandboxes").get("", 0) < DOCKER_POOL_SIZE:
            assert time.monotonic() < deadline, "the docker pool did not refill"
            time.sleep(0.2)
        # The pool removes a recycled container before it creates the replacement.
        states = [c["State"]["Status"] for c in self.containers()]
        assert states == ["running"] * DOCKER_POOL_SIZE, states

    def close(self, check: bool = True) -> None:
        """Stop the service; with `check`, a docker service must leave no container."""
        self.grpc.close()
        self.http.close()
        self.other.close()
        self.process.terminate()
        try:
            self.process.wait(60 if self.backend == "docker" else 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            if check and self.backend == "docker":
                assert self.containers() == [], "the service left containers at close"
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class Target:
    backend: str
    mode: str


ROOT = os.geteuid() == 0
TARGETS = [
    *([pytest.param(Target("bwrap", "root"), id="bwrap-root")] if ROOT else []),
    pytest.param(Target("bwrap", "non-root"), id="bwrap-non-root"),
    # The docker backend runs as root only (it refuses to start otherwise).
    *(
        [pytest.param(Target("docker", "root"), id="docker-root", marks=pytest.mark.docker)]
        if ROOT
        else []
    ),
]


@pytest.fixture(scope="module", params=TARGETS)
def service(request):
    service = Service(request.param.backend, request.param.mode)
    try:
        yield service
        if service.backend == "docker":  # the attacks' recycles were all refilled, no more
            service.wait_pool_full()
    finally:
        service.close()


def left_running() -> list[str]:
    out = subprocess.run(
        ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        line[:120]
        for line in out.splitlines()
        if MARKER in line and not line.startswith("Z") and "ps -eo" not in line
    ]


# -- the attacks: each takes the service and what its backend must answer (the case table's
# column for it), attacks, and asserts the attack's own outcome --------------------------------


def fork_bomb(svc, expect):
    answer = svc.run(
        f"import os\nwhile True:\n    try: os.fork()\n    except OSError: pass  # {MARKER}",
        run_timeout=3,
    )
    assert answer["status"] == expect, answer


def memory_bomb(svc, expect):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))"
    # The service's longest timeout: on a starved machine reaching the limit takes seconds.
    answer = svc.run(code, memory_limit_MB=256, run_timeout=10)
    assert answer["status"] == "Failed"
    detail = answer["message"] + answer["run_result"]["stderr"]
    assert any(word in detail for word in expect), answer


def loop_past_timeout(svc, expect):
    answer = svc.run("while True: pass", run_timeout=1)
    assert answer["run_result"]["status"] == expect


def double_fork_setsid_orphan(svc, expect):
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{MARKER}'])\n    os._exit(0)\nprint('parent done')"
    )
    answer = svc.run(code)
    assert answer["run_result"]["stdout"] == expect


def output_flood(svc, expect):
    answer = svc.run("import sys\nwhile True: sys.stdout.write('x' * 65536)")
    assert answer["status"] == "Failed" and expect in answer["message"]


def network_to_loopback_and_dns(svc, expect):
    code = (
        f"import socket\nfor target in [('127.0.0.1', {svc.http_port}), ('8.8.8.8', 53)]:\n"
        "    try:\n        socket.create_connection(target, timeout=1); print('reached', target)\n"
        "    except OSError: print('blocked')\n"
        "try:\n    socket.getaddrinfo('example.com', 80); print('resolved')\n"
        "except OSError: print('blocked')\n"
    )
    assert svc.run(code)["run_result"]["stdout"] == expect


def reading_host_files(svc, expect):
    """Per path: `absent` (not in the sandbox's view), `unreadable` (there, the image's own,
    but closed to the program's uid) or `READ`."""
    paths = ["/etc/shadow", "/root", str(svc.sentinel), str(svc.work_root)]
    code = (
        f"import os\nfor path in {paths!r}:\n"
        "    if not os.path.lexists(path): print('absent'); continue\n"
        "    try:\n"
        "        os.listdir(path) if os.path.isdir(path) else open(path, 'rb').read(1)\n"
        "        print('READ')\n"
        "    except OSError: print('unreadable')"
    )
    assert svc.run(code)["run_result"]["stdout"].split() == expect


def writing_outside_the_work_dir(svc, expect):
    targets = ["/usr/evil", "/etc/evil", "/evil", f"{svc.sentinel}/passwd"]
    code = (
        f"for path in {targets!r}:\n    try:\n        open(path, 'w').write('x'); print('wrote')\n"
        "    except OSError: print('refused')"
    )
    assert svc.run(code)["run_result"]["stdout"] == expect
    assert not any(os.path.exists(p) for p in targets[:3])


def environment_and_proc_secrets(svc, expect):
    code = (
        "import os\nprint('AGENTRL_HOSTILE_SECRET' in os.environ)\n"
        "seen = ''\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
        "        try: seen += open(f'/proc/{pid}/environ').read()\n        except OSError: pass\n"
        f"print({SECRET!r} in seen)\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)"
    )
    assert svc.run(code)["run_result"]["stdout"] == expect


def disk_fill(svc, expect):
    """256 MB per mount in 2 MB files (each below RLIMIT_FSIZE): every mount stops at disk_mb
    (16 here; /work and /tmp share it as root and on docker, and /dev/shm too without root),
    /dev is closed (the errno by backend is the case's), and nothing reaches the host's disk
    under work_root."""
    code = (
        "import os\nwritten = {}\nfor mount in ('/work', '/tmp', '/dev/shm', '/dev'):\n"
        "    written[mount] = [0, 0]\n    try:\n        for index in range(128):\n"
        "            with open(f'{mount}/fill-{index}', 'wb') as f: f.write(b'x' * (2 << 20))\n"
        "            written[mount][0] += 2\n"
        "    except OSError as e: written[mount][1] = e.errno\nprint(written)"
    )
    before = host_disk_bytes(svc.work_root)
    answer = svc.run(code, run_timeout=10)
    written = ast.literal_eval(answer["run_result"]["stdout"])
    assert {mount: errno for mount, (_, errno) in written.items()} == expect, written
    assert all(megabytes <= 16 for megabytes, _ in written.values()), written
    assert host_disk_bytes(svc.work_root) - before < 1 << 20


def host_disk_bytes(path: Path) -> int:
    """Bytes under `path` on its own file system (slot tmpfs mounts are not the disk)."""
    out = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def cpu_starvation(svc, expect):
    code = (
        "import multiprocessing, time\ndef spin(_):\n    end = time.time() + 3\n"
        "    while time.time() < end: pass\n"
        "with multiprocessing.Pool(4) as pool: pool.map(spin, range(4))\nprint('done')"
    )
    assert svc.run(code, run_timeout=10)["status"] in expect


def oversized_and_malformed_requests(svc, expect):
    too_big, malformed = expect
    assert (
        svc.http.post("/run_code", json={"code": "x" * (2 << 20), "language": "python"}).status_code
        == too_big
    )
    assert svc.http.post("/run_code", content=b"{not json").status_code == malformed
    for files in ({"a.txt": "!!!notbase64"}, {"/etc/passwd": "eA=="}, {"../x": "eA=="}):
        body = {"code": "1", "language": "python", "files": files}
        assert svc.http.post("/run_code", json=body).status_code == malformed, files


def session_isolation(svc, expect):
    """`isolated`: one session's state is invisible to another."""
    write = svc.grpc.execute(
        f"secret = {SECRET!r}\nopen('s.txt', 'w').write(secret)", session_id="alice"
    )
    peek = svc.grpc.execute(
        "import os\nprint('secret' in dir(), os.path.exists('s.txt'))", session_id="mallory"
    )
    assert expect == "isolated"
    assert write.status == Status.OK, write
    assert peek.stdout == "False False\n", peek
    svc.grpc.close_session("alice")
    svc.grpc.close_session("mallory")


def session_link_planting(svc, expect):
    """A session plants links to host paths, then sends files through them (`links refused`):
    the planting runs and each write is rejected."""
    target = svc.sentinel / "passwd"
    plant = f"import os\nos.symlink({str(target)!r}, 'input.txt')\nos.symlink({str(svc.sentinel)!r}, 'd')"
    planted = svc.grpc.execute(plant, session_id="planter")
    writes = [
        svc.grpc.execute("1", session_id="planter", files={path: b"pwned"})
        for path in ("input.txt", "d/new.txt")
    ]
    assert expect == "links refused"
    assert planted.status == Status.OK, planted
    assert all(result.status == Status.REJECTED for result in writes), writes
    svc.grpc.close_session("planter")


def signals_to_everything(svc, expect):
    code = "import os, signal\nfor pid in (-1, 1):\n    try: os.kill(pid, signal.SIGKILL)\n    except OSError as e: print(e.errno)\nprint('alive')"
    answer = svc.run(code)
    assert answer["status"] in expect


def ptrace_setuid_mount(svc, expect):
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, 1, 0, 0), libc.mount(b'none', b'/work', b'tmpfs', 0, None),"
        " libc.unshare(0x10000000))\n"
        "try:\n    os.setuid(0); print('root')\nexcept OSError: print('refused')"
    )
    assert svc.run(code)["run_result"]["stdout"] == expect


@dataclass(frozen=True)
class Case:
    attack: Callable[[Service, Any], None]
    bwrap: Any
    """What the attack must see on the bwrap backend (both modes)."""
    docker: Any
    """... and on the docker backend."""
    docker_recycles: tuple[str, ...] = ()
    """Recycle reasons the attack must cause on docker (exactly these, one each)."""

    def expect(self, backend: str) -> Any:
        return {"bwrap": self.bwrap, "docker": self.docker}[backend]


ENOSPC, EACCES, EROFS = 28, 13, 30
# The attacks that make docker recycle a container are spread out: its replacement is created
# in the background (seconds on vfs) while the next ones run.
CASES = [
    # The bwrap runs fail at the process limit of the run; docker's at the container's pids
    # limit, then time out (a container that timed out is recycled).
    Case(fork_bomb, "Failed", "Failed", ("timeout",)),
    Case(double_fork_setsid_orphan, "parent done\n", "parent done\n"),
    Case(output_flood, "output_limit", "output_limit"),
    Case(network_to_loopback_and_dns, "blocked\n" * 3, "blocked\n" * 3),
    # Non-root bwrap samples memory (MemoryError or a kill after the fact); docker's cgroup kills.
    Case(memory_bomb, ("oom", "MemoryError"), ("oom",), ("oom",)),
    # bwrap shows no /etc/shadow nor /root; the docker image has its own, closed to the uid.
    Case(
        reading_host_files,
        ["absent"] * 4,
        ["unreadable", "unreadable", "absent", "absent"],
    ),
    Case(writing_outside_the_work_dir, "refused\n" * 4, "refused\n" * 4),
    Case(environment_and_proc_secrets, "False\nFalse\nTrue\n", "False\nFalse\nTrue\n"),
    Case(loop_past_timeout, "TimeLimitExceeded", "TimeLimitExceeded", ("timeout",)),
    Case(cpu_starvation, ("Success", "Failed"), ("Success", "Failed")),
    Case(oversized_and_malformed_requests, (413, 422), (413, 422)),
    # Docker sessions hold a container each (removed when the session is closed).
    Case(session_isolation, "isolated", "isolated"),
    # /dev: bwrap mounts it read-only; docker's is a tmpfs of root's, closed to the uid. On
    # docker, files left in /tmp and /dev/shm recycle the container.
    Case(
        disk_fill,
        {"/work": ENOSPC, "/tmp": ENOSPC, "/dev/shm": ENOSPC, "/dev": EROFS},
        {"/work": ENOSPC, "/tmp": ENOSPC, "/dev/shm": ENOSPC, "/dev": EACCES},
        ("write_outside_workdir",),
    ),
    Case(session_link_planting, "links refused", "links refused"),
    Case(signals_to_everything, ("Success", "Failed"), ("Success", "Failed")),
    Case(ptrace_setuid_mount, "-1 -1 -1\nrefused\n", "-1 -1 -1\nrefused\n"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.attack.__name__ for case in CASES])
def test_attack_is_contained(service, case):
    before = service.host_state()
    docker = service.backend == "docker"
    recycles_before = service.recycles() if docker else {}
    containers_before = service.container_ids() if docker else set()
    bystander: dict = {}

    def print_one() -> None:
        time.sleep(0.3)  # while the attack runs
        body = {"code": "print(1)", "language": "python", "run_timeout": 10}
        bystander["answer"] = service.other.post("/run_code", json=body).json()

    thread = threading.Thread(target=print_one)
    thread.start()
    try:
        case.attack(service, case.expect(service.backend))
    finally:
        thread.join(DOCKER_REFILL_S)
    assert bystander["answer"]["run_result"]["stdout"] == "1\n", bystander
    assert service.host_state() == before
    deadline = time.monotonic() + 10
    while left_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left_running() == []
    if docker:
        while service.left_in_containers() and time.monotonic() < deadline:
            time.sleep(0.1)  # the pool resets a container in the background
        assert service.left_in_containers() == []
        after = service.recycles()
        moved = {
            reason: after[reason] - recycles_before.get(reason, 0)
            for reason in after
            if after[reason] != recycles_before.get(reason, 0)
        }
        assert moved == dict.fromkeys(case.docker_recycles, 1), moved
        # Each recycled container is removed (before its replacement is created, in the
        # background: the fixture waits for the whole pool once, after the battery). Earlier
        # attacks' recycled containers were gone before this one started.
        deadline = time.monotonic() + DOCKER_REFILL_S
        while len(containers_before - service.container_ids()) < len(case.docker_recycles):
            assert time.monotonic() < deadline, "a recycled container was not removed"
            time.sleep(0.2)
        now = service.container_ids()
        assert len(containers_before - now) == len(case.docker_recycles)
        assert len(now) <= DOCKER_POOL_SIZE, now
    assert service.http.get("/readyz").status_code == 200


@pytest.mark.skipif(not ROOT, reason="starting the service as uid 10001 needs root")
def test_docker_refuses_the_non_root_mode(tmp_path):
    """The docker backend has no non-root mode (it writes the containers' cgroups and mounts
    their work dirs): the service as uid 10001 stops at start-up and says why."""
    tmp_path.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AGENTRL__SANDBOX__BACKEND": "docker",
        "AGENTRL__SANDBOX__WORK_ROOT": str(tmp_path),
        "AGENTRL__SANDBOX__HTTP_PORT": str(free_port()),
        "AGENTRL__SANDBOX__GRPC_PORT": str(free_port()),
    }
    uid = NON_ROOT_UID
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    started = subprocess.run(
        [*argv, sys.executable, "-c", SERVE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # it must fail
    )
    assert started.returncode != 0
    assert "backend: docker must run as root" in started.stderr, started.stderr[-2000:]
