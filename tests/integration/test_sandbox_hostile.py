"""A hostile battery against a real sandbox service (bwrap backend), in each mode it deploys:
`root` (the service as root: cgroups, tmpfs, setpriv) and `non-root` (uid 10001 as the
Kubernetes manifests run it: no cgroups, no mounts). The service is `agentrl.sandbox.main`
in its own process, reached over HTTP (SandboxFusion's /run_code) and gRPC (sessions).

Each attack class runs while another client sends `print(1)`; after each: that client got its
answer, the host is unchanged (a sentinel directory outside the sandbox keeps its files and
contents, no file appeared where a program tried to write), and nothing the attack started is
left running (each attack's processes carry a marker on their command line). Non-root mode
has no cgroups: memory and CPU per run are sampled there (a memory bomb may end as MemoryError
or `oom`), disk is the tmpfs bwrap mounts in the run's namespace. The docker backend's battery
is test_sandbox_docker.py.
"""

import ast
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from agentrl.sandbox.client import SandboxClient
from agentrl.sandbox.interface import Status

pytestmark = pytest.mark.slow

NON_ROOT_UID = 10001
MARKER = "4242.77"  # in the command line of every process an attack leaves behind
SECRET = "hostile-secret-do-not-leak"
SERVE = "from agentrl.common.config import load_config\nfrom agentrl.sandbox.main import main\nmain(load_config())"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """`agentrl.sandbox.main` in a process of its own, as root or as NON_ROOT_UID."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
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
        argv = [sys.executable, "-c", SERVE]
        if mode == "non-root":
            uid = NON_ROOT_UID
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
        self.process = subprocess.Popen(argv, env=env)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, "the sandbox service exited at start-up"
            assert time.monotonic() < deadline, "the sandbox service did not become ready"
            time.sleep(0.1)
        self.grpc = SandboxClient(f"127.0.0.1:{self.grpc_port}", token=None)
        self.other = httpx.Client(base_url=self.url, timeout=60)  # another client

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

    def close(self) -> None:
        self.grpc.close()
        self.http.close()
        self.other.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


MODES = ["root", "non-root"] if os.geteuid() == 0 else ["non-root"]


@pytest.fixture(scope="module", params=MODES)
def service(request):
    service = Service(request.param)
    yield service
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


# -- the attacks: each takes the service, attacks, and asserts the attack's own outcome --------


def fork_bomb(svc):
    answer = svc.run(
        f"import os\nwhile True:\n    try: os.fork()\n    except OSError: pass  # {MARKER}",
        run_timeout=3,
    )
    assert answer["status"] == "Failed"


def memory_bomb(svc):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))"
    # The service's longest timeout: on a starved machine reaching the limit takes seconds.
    answer = svc.run(code, memory_limit_MB=256, run_timeout=10)
    assert answer["status"] == "Failed"
    detail = answer["message"] + answer["run_result"]["stderr"]
    assert "oom" in detail or "MemoryError" in detail


def loop_past_timeout(svc):
    answer = svc.run("while True: pass", run_timeout=1)
    assert answer["run_result"]["status"] == "TimeLimitExceeded"


def double_fork_setsid_orphan(svc):
    code = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{MARKER}'])\n    os._exit(0)\nprint('parent done')"
    )
    answer = svc.run(code)
    assert answer["run_result"]["stdout"] == "parent done\n"


def output_flood(svc):
    answer = svc.run("import sys\nwhile True: sys.stdout.write('x' * 65536)")
    assert answer["status"] == "Failed" and "output_limit" in answer["message"]


def network_to_loopback_and_dns(svc):
    code = (
        f"import socket\nfor target in [('127.0.0.1', {svc.http_port}), ('8.8.8.8', 53)]:\n"
        "    try:\n        socket.create_connection(target, timeout=1); print('reached', target)\n"
        "    except OSError: print('blocked')\n"
        "try:\n    socket.getaddrinfo('example.com', 80); print('resolved')\n"
        "except OSError: print('blocked')\n"
    )
    assert svc.run(code)["run_result"]["stdout"] == "blocked\n" * 3


def reading_host_files(svc):
    code = (
        f"import os\nfor path in ['/etc/shadow', '/root', {str(svc.sentinel)!r}, "
        f"{str(svc.work_root)!r}]:\n"
        "    print(os.path.exists(path))"
    )
    assert svc.run(code)["run_result"]["stdout"] == "False\n" * 4


def writing_outside_the_work_dir(svc):
    targets = ["/usr/evil", "/etc/evil", "/evil", f"{svc.sentinel}/passwd"]
    code = (
        f"for path in {targets!r}:\n    try:\n        open(path, 'w').write('x'); print('wrote')\n"
        "    except OSError: print('refused')"
    )
    assert svc.run(code)["run_result"]["stdout"] == "refused\n" * 4
    assert not any(os.path.exists(p) for p in targets[:3])


def environment_and_proc_secrets(svc):
    code = (
        "import os\nprint('AGENTRL_HOSTILE_SECRET' in os.environ)\n"
        "seen = ''\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
        "        try: seen += open(f'/proc/{pid}/environ').read()\n        except OSError: pass\n"
        f"print({SECRET!r} in seen)\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)"
    )
    assert svc.run(code)["run_result"]["stdout"] == "False\nFalse\nTrue\n"


def disk_fill(svc):
    """256 MB per mount in 2 MB files (each below RLIMIT_FSIZE): every mount stops at disk_mb
    (16 here; /work and /tmp share it as root, each has its own without root), /dev is
    read-only, and nothing reaches the host's disk under work_root."""
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
    assert {mount: errno for mount, (_, errno) in written.items()} == {
        "/work": 28,  # ENOSPC
        "/tmp": 28,
        "/dev/shm": 28,
        "/dev": 30,  # EROFS
    }, written
    assert all(megabytes <= 16 for megabytes, _ in written.values()), written
    assert host_disk_bytes(svc.work_root) - before < 1 << 20


def host_disk_bytes(path: Path) -> int:
    """Bytes under `path` on its own file system (slot tmpfs mounts are not the disk)."""
    out = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def cpu_starvation(svc):
    code = (
        "import multiprocessing, time\ndef spin(_):\n    end = time.time() + 3\n"
        "    while time.time() < end: pass\n"
        "with multiprocessing.Pool(4) as pool: pool.map(spin, range(4))\nprint('done')"
    )
    assert svc.run(code, run_timeout=10)["status"] in ("Success", "Failed")


def oversized_and_malformed_requests(svc):
    assert (
        svc.http.post("/run_code", json={"code": "x" * (2 << 20), "language": "python"}).status_code
        == 413
    )
    assert svc.http.post("/run_code", content=b"{not json").status_code == 422
    for files in ({"a.txt": "!!!notbase64"}, {"/etc/passwd": "eA=="}, {"../x": "eA=="}):
        body = {"code": "1", "language": "python", "files": files}
        assert svc.http.post("/run_code", json=body).status_code == 422, files


def session_isolation(svc):
    assert (
        svc.grpc.execute(
            f"secret = {SECRET!r}\nopen('s.txt', 'w').write(secret)", session_id="alice"
        ).status
        == Status.OK
    )
    peek = svc.grpc.execute(
        "import os\nprint('secret' in dir(), os.path.exists('s.txt'))", session_id="mallory"
    )
    assert peek.stdout == "False False\n", peek
    svc.grpc.close_session("alice")
    svc.grpc.close_session("mallory")


def session_link_planting(svc):
    target = svc.sentinel / "passwd"
    plant = f"import os\nos.symlink({str(target)!r}, 'input.txt')\nos.symlink({str(svc.sentinel)!r}, 'd')"
    assert svc.grpc.execute(plant, session_id="planter").status == Status.OK
    for path in ("input.txt", "d/new.txt"):
        result = svc.grpc.execute("1", session_id="planter", files={path: b"pwned"})
        assert result.status == Status.REJECTED, result
    svc.grpc.close_session("planter")


def signals_to_everything(svc):
    code = "import os, signal\nfor pid in (-1, 1):\n    try: os.kill(pid, signal.SIGKILL)\n    except OSError as e: print(e.errno)\nprint('alive')"
    answer = svc.run(code)
    assert answer["status"] in ("Success", "Failed")


def ptrace_setuid_mount(svc):
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, 1, 0, 0), libc.mount(b'none', b'/work', b'tmpfs', 0, None),"
        " libc.unshare(0x10000000))\n"
        "try:\n    os.setuid(0); print('root')\nexcept OSError: print('refused')"
    )
    assert svc.run(code)["run_result"]["stdout"] == "-1 -1 -1\nrefused\n"


ATTACKS = [
    fork_bomb,
    memory_bomb,
    loop_past_timeout,
    double_fork_setsid_orphan,
    output_flood,
    network_to_loopback_and_dns,
    reading_host_files,
    writing_outside_the_work_dir,
    environment_and_proc_secrets,
    disk_fill,
    cpu_starvation,
    oversized_and_malformed_requests,
    session_isolation,
    session_link_planting,
    signals_to_everything,
    ptrace_setuid_mount,
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
def test_attack_is_contained(service, attack):
    before = service.host_state()
    bystander: dict = {}

    def print_one() -> None:
        time.sleep(0.3)  # while the attack runs
        body = {"code": "print(1)", "language": "python", "run_timeout": 10}
        bystander["answer"] = service.other.post("/run_code", json=body).json()

    thread = threading.Thread(target=print_one)
    thread.start()
    try:
        attack(service)
    finally:
        thread.join(60)
    assert bystander["answer"]["run_result"]["stdout"] == "1\n", bystander
    assert service.host_state() == before
    deadline = time.monotonic() + 10
    while left_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left_running() == []
    assert service.http.get("/readyz").status_code == 200
