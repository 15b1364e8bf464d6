"""Sandbox throughput and latency: backends against bare `python3 -c`, driven the same way.

Each backend runs behind a real gRPC server on 127.0.0.1 (the service's own code path:
validation, admission, metrics); `bare` is a backend that runs `python3 -c CODE` with no
isolation at all, through the same server, client, timeout and output handling. For every
workload and concurrency it prints requests/s, p50 and p99 latency, CPU per request (the
whole machine, this process, the sandboxed programs) and the statuses seen. A pool's
background work for a cell's requests (bwrap re-primes a warm sandbox after each run) is
counted in them: their CPU is read once the pool is full again (the paired table also gives
it as read when the last request was answered, which misses the re-priming still under way).
All backends are started first and every cell runs them back to back (with `--rounds N`, N
times in alternating order, reporting medians), so that a shared machine's changing load hits
all of them alike; the closing tables give throughput, p50 and CPU as ratios to bare.

    .venv/bin/python benchmarks/sandbox_bench.py                 # bwrap and bare
    .venv/bin/python benchmarks/sandbox_bench.py --rounds 3 --workloads 'print(1)'
    .venv/bin/python benchmarks/sandbox_bench.py --backends bwrap bare docker
    .venv/bin/python benchmarks/sandbox_bench.py --backends docker --pool-size 32
    .venv/bin/python benchmarks/sandbox_bench.py --backends bare docker docker-exec \
        --pool-size 4 --rounds 3 --workloads 'print(1)' --concurrency 32
    .venv/bin/python benchmarks/sandbox_bench.py --backends bare bwrap nonroot --starvation
    .venv/bin/python benchmarks/sandbox_bench.py --backends docker --starvation --pool-size 10

`--client-process` sends each cell's requests from a process of its own (as rollout workers
do) instead of client threads beside the server: the service's process then holds the GIL for
the service alone, and its CPU column no longer counts the clients (the machine's column does):

    .venv/bin/python benchmarks/sandbox_bench.py --backends bare bwrap --rounds 3 \
        --workloads 'print(1)' '10 MB output' --concurrency 32 --client-process

`nonroot` is the service as the Kubernetes manifests run it: `agentrl.sandbox.main` in a
process of its own as uid 10001 (no cgroups, no tmpfs, no setpriv; this benchmark must run as
root to start it), reached over gRPC like the others (its CPU is counted in the machine's
column only). `--starvation` measures instead what one client's `print(1)` costs while
STARVATION_HOGS other requests each run a STARVATION_HOG_S-second busy loop, as a ratio to
its latency on the same idle service (no timing is asserted anywhere); a docker pool there has
--pool-size containers (STARVATION_HOGS + 1 is enough: one for each hog and one for the probe);
with --rounds N it measures N idle/attack pairs and gives the ratio's min / median / max.

Workloads: `print(1)`, a ~50 ms CPU loop, an import-heavy snippet, a 1 s timeout, and 10 MB of
output (max_output_bytes is set to 16 MB so it must come back whole, status ok).

`docker-exec` is the docker backend as it was before its in-container executor (one `docker
exec` per run), loaded from git at --docker-exec-commit, so both run side by side in one
process against the same engine and image. `bwrap-old` is likewise the bwrap backend of
--bwrap-old-commit (each sandbox started through sh and setpriv), beside the current one:

    .venv/bin/python benchmarks/sandbox_bench.py --backends bare bwrap bwrap-old --rounds 3 \
        --workloads 'print(1)' '10 MB output' --concurrency 32

`--sessions K` measures stateful sessions instead: each backend but bare opens K sessions
(their first calls untimed; a docker session's creates its container), then K client threads
each call their own session, `print(1)` and a counter kept in the session in turn, against
bare one-shot runs of the same code through the same server at concurrency K; at the end
every session is closed (CloseSession, which removes a docker session's container):

    .venv/bin/python benchmarks/sandbox_bench.py --backends bare docker bwrap --sessions 4 \
        --pool-size 4 --rounds 3 --requests 800

docker needs the engine and the image (AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh, then
bash services/sandbox/image/build.sh). Its pool is filled before each cell (a timed-out run
recycles its container), so the figures are warm-pool latencies; a cell at a concurrency above
--pool-size also measures waiting for a container.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from paired import round_order

from agentrl.common.config import SandboxConfig
from agentrl.common.grpc_client import RpcCallError
from agentrl.common.grpc_server import serve
from agentrl.sandbox.capture import drive, spawn
from agentrl.sandbox.client import SandboxClient
from agentrl.sandbox.executor import BACKENDS, Sandbox
from agentrl.sandbox.interface import Backend, ExecutionRequest, ExecutionResult, Status
from agentrl.sandbox.servicer import SERVICE_NAME, SandboxServicer, register

# 10 MB of output must come back whole: the cap sits above it.
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
CONCURRENCIES = (1, 8, 32)
# Pause before each cell: warm interpreters started by the previous cell finish starting.
SETTLE_S = 0.5
# A docker pool re-creates recycled containers in the background (seconds each on vfs).
POOL_REFILL_WAIT_S = 300.0
# The CPU-starvation attack of issue 16: eight 5-second busy loops while a client sends print(1).
STARVATION_HOGS = 8
STARVATION_HOG_S = 5.0
STARVATION_PROBES = 10
NON_ROOT_UID = 10001
# Session mode (--sessions): each client thread calls its own session with these in turn; the
# second uses state an earlier call left (x counts the session's calls of it: 0, 1, 2, ...).
SESSION_COUNTER = "x = x + 1 if 'x' in dir() else 0\nprint(x)"
SESSION_CALLS = ("print(1)", SESSION_COUNTER)
SESSION_CALL_TIMEOUT_S = 10.0
# A session's first call: the client's deadline is this plus 30 s (the service's max_timeout_s).
SESSION_OPEN_TIMEOUT_S = 60.0
# The Docker engine's own processes (their names in /proc/<pid>/stat); the shims too.
DOCKER_ENGINE = ("dockerd", "containerd", "runc")
# The last commit whose docker backend ran each program through its own `docker exec`.
DOCKER_EXEC_COMMIT = "0744b96"
# The last commit whose bwrap backend started each sandbox through sh and setpriv, and the
# modules `bwrap-old` loads from it (the rest, and runner.py beside them, as that commit had it).
BWRAP_OLD_COMMIT = "bf60bda"
BWRAP_OLD_MODULES = ("bwrap_argv", "bwrap")
SERVE = (
    "from agentrl.common.config import load_config\n"
    "from agentrl.sandbox.main import main\n"
    "main(load_config())"
)
WORKLOADS = {
    "print(1)": ("print(1)", 10.0),
    "cpu ~50ms": ("n = 0\nfor i in range(1_300_000):\n    n += i\nprint(n)", 10.0),
    "imports": (
        (
            "import json, decimal, asyncio, email.parser, http.client, sqlite3, "
            "xml.etree.ElementTree, unittest, argparse, dataclasses\nprint('ok')"
        ),
        10.0,
    ),
    "timeout 1s": ("while True:\n    pass", 1.0),
    "10 MB output": ("import sys\nsys.stdout.write('x' * (10 * 1024 * 1024))", 20.0),
}


class BareBackend(Backend):
    """No isolation at all: `python3 -c CODE` as a plain subprocess (the reference)."""

    name = "bare"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        proc = spawn([self.config.python, "-c", request.code], {"PATH": "/usr/bin:/bin"})
        captured = drive(
            proc,
            stdin=request.stdin,
            timeout_s=request.timeout_s,
            max_output_bytes=self.config.max_output_bytes,
        )
        status = (
            Status.TIMEOUT
            if captured.timed_out
            else Status.OUTPUT_LIMIT
            if captured.output_exceeded
            else Status.OK
            if captured.returncode == 0
            else Status.ERROR
        )
        return ExecutionResult(
            status,
            exit_code=captured.returncode,
            stdout=captured.stdout.decode(errors="replace"),
            stderr=captured.stderr.decode(errors="replace"),
            wall_time_s=captured.wall_time_s,
            backend=self.name,
        )


def modules_at(commit: str, names: tuple[str, ...]) -> types.ModuleType:
    """The modules `names` (services/sandbox/<name>.py) as `commit` had them, loaded in that
    order under other module names (`<name>_at`) beside the current ones; the last one is
    returned. Their imports of each other are renamed too; every other module is the current
    one. The files are loaded from a temporary directory, so a module reading a file beside
    itself at import (the bwrap backend's runner.py) reads the old one."""
    repo = Path(__file__).resolve().parents[1]
    directory = Path(tempfile.mkdtemp(prefix=f"sandbox-bench-{commit}-"))
    for name in [*names, "runner"]:
        source = subprocess.run(
            ["git", "-C", str(repo), "show", f"{commit}:services/sandbox/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for other in names:
            source = re.sub(
                rf"\bagentrl\.sandbox\.{other}\b", f"agentrl.sandbox.{other}_at", source
            )
        (directory / f"{name}.py").write_text(source)
    for name in names:
        path = directory / f"{name}.py"
        module = types.ModuleType(f"agentrl.sandbox.{name}_at")
        module.__file__ = str(path)
        sys.modules[module.__name__] = module
        exec(compile(path.read_text(), f"{commit}:{name}.py", "exec"), module.__dict__)  # noqa: S102
    shutil.rmtree(directory)
    return module


def machine_busy_s() -> float:
    """CPU seconds all cores spent outside idle/iowait since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def docker_engine_cpu_s() -> float:
    """CPU seconds of the Docker engine's processes (dockerd, containerd, the shims with the
    runc processes they reaped): what a `docker exec` costs outside the container. Another
    client of the same engine adds to it; compare cells run back to back."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                line = stat.read()
        except OSError:
            continue
        comm = line[line.index("(") + 1 : line.rindex(")")]
        if comm in DOCKER_ENGINE or comm.startswith("containerd-shim"):
            fields = line[line.rindex(")") + 2 :].split()
            ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu_s(backend: Backend) -> tuple[float, float]:
    """CPU seconds of this process (the server, its backend threads, the client) and of the
    programs it ran: the bwrap backend's cgroups (every sandboxed process from its shell
    prologue on); docker's live containers' cgroups, the `docker` CLI processes it reaped and
    the engine's processes; else its reaped children (bare interpreters)."""
    own, kids = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    cgroups = getattr(backend, "cgroups", None)
    if cgroups is not None:
        usage_ns = int((cgroups.paths["cpuacct"] / "cpuacct.usage").read_text())
        return own.ru_utime + own.ru_stime, usage_ns / 1e9
    programs = kids.ru_utime + kids.ru_stime
    if backend.name == "docker":
        parent = getattr(backend, "cgroup_parent", None)  # the containers' own parent group
        if parent is not None:
            programs += int((parent.paths["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        for container in list(backend.pool._live.values()) if parent is None else []:
            try:
                programs += container.cgroup.cpu_time_s()
            except OSError:  # removed meanwhile (recycled): its CPU is lost to this count
                pass
        programs += docker_engine_cpu_s()
    return own.ru_utime + own.ru_stime, programs


def run_cell(
    client: SandboxClient,
    backend: Backend,
    code: str,
    timeout_s: float,
    concurrency: int,
    num_requests: int,
    pool_size: int,
    client_target: str | None = None,
) -> dict:
    """One cell: `client`'s requests from this process, or from a process of its own that
    reaches the server at `client_target`."""
    if client_target is not None:
        with ClientProcess(client_target, code, timeout_s, concurrency, num_requests) as remote:
            wait_for_pool(backend, pool_size)
            return measure(backend, pool_size, remote.send)

    def one(_: int) -> tuple[float, str, int]:
        return timed_call(client, code, timeout_s)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(min(concurrency, 4))))  # warm up connections and slots
        wait_for_pool(backend, pool_size)  # the warm-up's slots are re-primed outside the cell
        return measure(backend, pool_size, lambda: list(pool.map(one, range(num_requests))))


def timed_call(client: SandboxClient, code: str, timeout_s: float) -> tuple[float, str, int]:
    """One request: (latency s, status, stdout bytes)."""
    start = time.perf_counter()
    try:
        result = client.execute(code, timeout_s=timeout_s)
    except RpcCallError as error:  # e.g. the client's deadline while queued for a container
        return time.perf_counter() - start, f"rpc {error.code().name}", 0
    return time.perf_counter() - start, result.status.value, len(result.stdout)


class ClientProcess:
    """A cell's clients in a process of their own (`--client-process`), as rollout workers are:
    the service's process then runs only the service, and its CPU column is the service's
    alone. The child connects and warms up (untimed), says so, sends the cell's requests when
    told, and answers with their (latency, status, stdout bytes) as JSON."""

    def __init__(
        self, target: str, code: str, timeout_s: float, concurrency: int, num_requests: int
    ) -> None:
        spec = json.dumps([target, code, timeout_s, concurrency, num_requests])
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--drive", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> Self:
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the client process did not start (its error is above)")
        return self

    def send(self) -> list[tuple]:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return [tuple(sample) for sample in json.loads(self.process.stdout.readline())]

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def drive_cell(spec: str) -> None:
    """The child of ClientProcess."""
    target, code, timeout_s, concurrency, num_requests = json.loads(spec)
    client = SandboxClient(target, token=None)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: timed_call(client, code, timeout_s), range(min(concurrency, 4))))
        print("ready", flush=True)
        sys.stdin.readline()
        samples = list(pool.map(lambda _: timed_call(client, code, timeout_s), range(num_requests)))
    print(json.dumps(samples), flush=True)
    client.close()


def measure(backend: Backend, pool_size: int, send: Callable[[], list[tuple]]) -> dict:
    """Run `send` (it returns one (latency s, status, stdout bytes) per request) and read what
    its requests cost: rate, latency, CPU per request."""
    start, busy, (own, kids) = time.perf_counter(), machine_busy_s(), own_cpu_s(backend)
    samples = send()
    elapsed = time.perf_counter() - start
    busy = machine_busy_s() - busy
    own_answered, kids_answered = own_cpu_s(backend)
    # A pool's background work for these requests (bwrap re-primes a warm sandbox per run,
    # docker resets containers) counts in their CPU: read it once that work is done.
    wait_for_pool(backend, pool_size)
    own_after, kids_after = own_cpu_s(backend)
    answered = own_answered + kids_answered - own - kids
    own, kids = own_after - own, kids_after - kids
    num_requests = len(samples)
    latencies = sorted(s[0] for s in samples)
    statuses: dict[str, int] = {}
    for _, status, _ in samples:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "rps": num_requests / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "statuses": statuses,
        "stdout_bytes": max(s[2] for s in samples),
        # CPU per request: the whole machine (sandboxes, kernel, service; other users' load
        # too, so compare cells run back to back), this process alone (gRPC, backend threads,
        # client) and its reaped children (sandboxes; kernel threads are not counted).
        "cpu_ms": 1000 * busy / num_requests,
        "service_cpu_ms": 1000 * own / num_requests,
        "sandbox_cpu_ms": 1000 * kids / num_requests,
        "own_cpu_ms": 1000 * (own + kids) / num_requests,
        # the same, read as the last request was answered (the pool's background work for the
        # last requests still under way; before 2026-12-06 the cell counted only this, plus
        # the warm-up's re-priming)
        "answered_cpu_ms": 1000 * answered / num_requests,
        "busy_cores": busy / elapsed,
    }


def wait_for_pool(backend: Backend, pool_size: int, timeout_s: float = POOL_REFILL_WAIT_S) -> None:
    """Let the previous cell's background work end: a docker pool refills (recycled containers
    are re-created), bwrap re-primes its slots; then let the last interpreters finish starting,
    so that no cell pays for its predecessor."""
    if backend.name not in ("docker", "bwrap"):
        time.sleep(SETTLE_S)
        return
    target = len(backend._all) if backend.name == "bwrap" else pool_size
    deadline = time.monotonic() + timeout_s
    while backend.name in ("docker", "bwrap") and backend.pool_size() < target:
        if time.monotonic() > deadline:
            print(f"  (pool at {backend.pool_size()}/{target} after {timeout_s:g} s)")
            return
        time.sleep(0.1)
    time.sleep(SETTLE_S)


class NonRootService:
    """`agentrl.sandbox.main` in its own process as NON_ROOT_UID (the manifests' mode); not an
    in-process backend: the bench reaches it through its gRPC server only."""

    name = "nonroot"

    def __init__(self, config: SandboxConfig) -> None:
        import socket
        import subprocess
        import sys
        import tempfile

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.work_root = tempfile.mkdtemp(prefix="agentrl-bench-", dir="/tmp")
        os.chmod(self.work_root, 0o755)
        os.chown(self.work_root, NON_ROOT_UID, NON_ROOT_UID)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": self.work_root,
            "AGENTRL__SANDBOX__GRPC_PORT": str(self.port),
            "AGENTRL__SANDBOX__HTTP_PORT": "0",
            "AGENTRL__SANDBOX__WORK_ROOT": self.work_root,
            "AGENTRL__SANDBOX__MAX_CONCURRENCY": str(config.max_concurrency),
            "AGENTRL__SANDBOX__QUEUE_SIZE": str(config.queue_size),
            "AGENTRL__SANDBOX__MAX_OUTPUT_BYTES": str(config.max_output_bytes),
            "AGENTRL__SANDBOX__MAX_TIMEOUT_S": str(config.max_timeout_s),
        }
        setpriv = ["setpriv", f"--reuid={NON_ROOT_UID}", f"--regid={NON_ROOT_UID}"]
        self.process = subprocess.Popen(
            [*setpriv, "--clear-groups", "--", sys.executable, "-c", SERVE], env=env
        )

    def close(self) -> None:
        import shutil

        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.work_root, ignore_errors=True)


@dataclass
class Bench:
    """One backend behind its own gRPC server on 127.0.0.1, with a client."""

    name: str
    backend: Backend | NonRootService
    sandbox: Sandbox
    servicer: SandboxServicer
    server: object
    client: SandboxClient

    @classmethod
    def start(
        cls,
        name: str,
        pool_size: int,
        docker_exec_commit: str = DOCKER_EXEC_COMMIT,
        bwrap_old_commit: str = BWRAP_OLD_COMMIT,
    ) -> Bench:
        config = SandboxConfig(
            backend="docker" if name.startswith("docker") else "bwrap",
            max_concurrency=max(CONCURRENCIES),
            queue_size=256,
            max_output_bytes=MAX_OUTPUT_BYTES,
            max_timeout_s=60,
            pool_size=pool_size,
            # Warm containers, as the figures claim: no recycling after N runs mid-cell (on vfs
            # a re-created container copies the whole image, tens of seconds on a busy host).
            runs_per_container=1_000_000,
            # 32 clients on 4 containers of a starved engine wait long for one (not an error).
            queue_timeout_s=POOL_REFILL_WAIT_S,
        )
        if name == "nonroot":
            remote = NonRootService(config)
            client = SandboxClient(f"127.0.0.1:{remote.port}", token=None)
            deadline = time.monotonic() + 60
            while True:  # until its gRPC server answers
                try:
                    client.execute("1", timeout_s=5)
                    break
                except Exception:
                    if time.monotonic() > deadline or remote.process.poll() is not None:
                        remote.close()
                        raise
                    time.sleep(0.2)
            return cls(name, remote, None, None, None, client)
        if name == "bare":
            backend = BareBackend(config)
        elif name == "docker-exec":
            names = ("docker_pool", "docker_backend")
            backend = modules_at(docker_exec_commit, names).DockerBackend(config)
        elif name == "bwrap-old":
            backend = modules_at(bwrap_old_commit, BWRAP_OLD_MODULES).BwrapBackend(config)
        else:
            backend = BACKENDS[config.backend](config)
        sandbox = Sandbox(config, backend=backend)
        servicer = SandboxServicer(sandbox)
        server = serve(
            register(servicer),
            [SERVICE_NAME],
            port=0,
            token=None,
            max_workers=config.max_concurrency + config.queue_size + 8,
        )
        return cls(
            name, backend, sandbox, servicer, server, SandboxClient(server.address, token=None)
        )

    @property
    def address(self) -> str:
        """Where the backend's gRPC server listens."""
        if self.server is None:  # a service process of its own
            return f"127.0.0.1:{self.backend.port}"
        return self.server.address

    def close(self) -> None:
        self.client.close()
        if self.server is None:  # a service process of its own
            self.backend.close()
            return
        self.server.stop(0)
        self.servicer.close()
        self.sandbox.close()


def starvation(names: list[str], pool_size: int, rounds: int = 1) -> None:
    """print(1)'s latency while STARVATION_HOGS busy loops run, as a ratio to idle (a docker
    pool of `pool_size` containers). Each round measures idle then under attack, back to back;
    the ratio is per round (min / median / max over the rounds)."""
    hog = f"import time\nend = time.time() + {STARVATION_HOG_S}\nwhile time.time() < end: pass"
    print(
        "\n| backend | print(1) p50 idle ms | p50 under attack ms | ratio min / median / max "
        "| max under attack ms | rounds | load average (1 min) before |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        one = Bench.start(name, pool_size)
        try:
            wait_for_pool(one.backend, pool_size)

            def probe(client: SandboxClient = one.client) -> float:
                start = time.perf_counter()
                result = client.execute("print(1)", timeout_s=30)
                assert result.stdout == "1\n", result
                return time.perf_counter() - start

            load = os.getloadavg()[0]
            idle_p50s, busy_p50s, ratios, worst = [], [], [], 0.0
            for _ in range(rounds):
                idle = [probe() for _ in range(STARVATION_PROBES)]
                with ThreadPoolExecutor(STARVATION_HOGS) as pool:
                    hogs = [
                        pool.submit(one.client.execute, hog, timeout_s=STARVATION_HOG_S * 4)
                        for _ in range(STARVATION_HOGS)
                    ]
                    time.sleep(0.5)  # the hogs are running
                    busy = [probe() for _ in range(STARVATION_PROBES)]
                    for done in hogs:
                        done.result()
                idle_p50s.append(statistics.median(idle))
                busy_p50s.append(statistics.median(busy))
                ratios.append(busy_p50s[-1] / idle_p50s[-1])
                worst = max(worst, *busy)
                wait_for_pool(one.backend, pool_size)  # docker: a hog may have been recycled
            ratios.sort()
            print(
                f"| {name} | {1000 * statistics.median(idle_p50s):.1f} | "
                f"{1000 * statistics.median(busy_p50s):.1f} | {ratios[0]:.1f} / "
                f"{statistics.median(ratios):.1f} / {ratios[-1]:.1f} | {1000 * worst:.1f} | "
                f"{rounds} | {load:.2f} |",
                flush=True,
            )
        finally:
            one.close()


def bench(
    names: list[str],
    num_requests: int,
    workloads: list[str],
    pool_size: int = max(CONCURRENCIES),
    rounds: int = 1,
    docker_exec_commit: str = DOCKER_EXEC_COMMIT,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    bwrap_old_commit: str = BWRAP_OLD_COMMIT,
    client_process: bool = False,
) -> list[tuple]:
    """Every cell runs each backend back to back (`rounds` times, alternating the order), so
    that the comparison sees the same load from whatever else runs on the machine."""
    benches = []
    try:
        for name in names:
            benches.append(Bench.start(name, pool_size, docker_exec_commit, bwrap_old_commit))
        rows = []
        for workload in workloads:
            code, timeout_s = WORKLOADS[workload]
            for concurrency in concurrencies:
                count = (
                    concurrency if workload == "timeout 1s" else max(num_requests, 2 * concurrency)
                )
                for round_index in range(rounds):
                    order = benches if round_index % 2 == 0 else benches[::-1]
                    for one in order:
                        wait_for_pool(one.backend, pool_size)
                        cell = run_cell(
                            one.client,
                            one.backend,
                            code,
                            timeout_s,
                            concurrency,
                            count,
                            pool_size,
                            one.address if client_process else None,
                        )
                        rows.append((workload, concurrency, one.name, cell))
                        print_cell(workload, concurrency, one.name, cell)
        return rows
    finally:
        for one in benches:
            one.close()


def print_cell(workload: str, concurrency: int, name: str, cell: dict) -> None:
    print(
        f"{workload:13} c={concurrency:<3} {name:6} "
        f"{cell['rps']:7.1f} req/s  p50 {cell['p50_ms']:7.1f} ms  "
        f"p99 {cell['p99_ms']:7.1f} ms  cpu/req {cell['cpu_ms']:5.1f} ms "
        f"(service {cell['service_cpu_ms']:4.1f}, programs {cell['sandbox_cpu_ms']:4.1f})  "
        f"busy {cell['busy_cores']:.2f} cores  {cell['statuses']} out={cell['stdout_bytes']}",
        flush=True,
    )


class SessionClients:
    """`num_sessions` client threads, each calling its own session of one backend in turn with
    SESSION_CALLS (bare: the same code as one-shot runs, no session). A counter call whose
    answer is not its session's previous one plus 1 is counted as status `state lost`."""

    def __init__(self, one: Bench, num_sessions: int) -> None:
        self.one = one
        self.bare = one.name == "bare"
        self.session_ids = [f"bench-{index}" for index in range(num_sessions)]
        self.counters = dict.fromkeys(self.session_ids, -1)  # last value each counter printed

    def call(
        self, session_id: str, code: str, timeout_s: float = SESSION_CALL_TIMEOUT_S
    ) -> tuple[float, str, int]:
        start = time.perf_counter()
        try:
            result = self.one.client.execute(
                code, timeout_s=timeout_s, session_id="" if self.bare else session_id
            )
        except RpcCallError as error:
            return time.perf_counter() - start, f"rpc {error.code().name}", 0
        status = result.status.value
        if code == SESSION_COUNTER and result.status == Status.OK:
            expected = 0 if self.bare else self.counters[session_id] + 1
            if result.stdout != f"{expected}\n":
                status = "state lost"
            elif not self.bare:
                self.counters[session_id] = expected
        return time.perf_counter() - start, status, len(result.stdout)

    def open(self) -> None:
        """Each session's first call, one after another (a docker session's creates its
        container: 5-15 s on a loaded vfs host); raises if one fails."""
        if self.bare:
            return
        for session_id in self.session_ids:
            latency, status, _ = self.call(session_id, SESSION_COUNTER, SESSION_OPEN_TIMEOUT_S)
            if status != "ok":
                raise RuntimeError(f"{self.one.name}: opening session {session_id}: {status}")
            print(f"  {self.one.name} session {session_id} opened in {latency:.1f} s", flush=True)

    def cell(self, calls_per_session: int, pool_size: int) -> dict:
        def client(session_id: str) -> list[tuple]:
            return [
                self.call(session_id, SESSION_CALLS[index % len(SESSION_CALLS)])
                for index in range(calls_per_session)
            ]

        with ThreadPoolExecutor(len(self.session_ids)) as pool:
            if self.bare:
                list(pool.map(client, self.session_ids))  # warm up connections
            wait_for_pool(self.one.backend, pool_size)

            def send() -> list[tuple]:
                return [s for found in pool.map(client, self.session_ids) for s in found]

            return measure(self.one.backend, pool_size, send)

    def close(self) -> None:
        """CloseSession for every session at once (a docker session's waits for its
        container's removal, up to 20 s)."""
        if self.bare:
            return
        start = time.perf_counter()
        with ThreadPoolExecutor(len(self.session_ids)) as pool:
            existed = list(pool.map(self.one.client.close_session, self.session_ids))
        print(
            f"  {self.one.name}: {sum(existed)} of {len(existed)} sessions closed in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )


def bench_sessions(
    names: list[str], num_sessions: int, num_requests: int, pool_size: int, rounds: int
) -> list[tuple]:
    """Sessions of each backend but bare against bare one-shot runs of the same code at the
    same concurrency: sessions opened once, then `rounds` rounds in rotating order, each cell
    `num_requests` calls spread over the sessions; rows named `<backend> sessions`."""
    workload = "session calls"
    calls_per_session = max(2, num_requests // num_sessions)
    clients: list[SessionClients] = []
    try:
        for name in names:
            clients.append(SessionClients(Bench.start(name, pool_size), num_sessions))
            wait_for_pool(clients[-1].one.backend, pool_size)
            clients[-1].open()
        rows = []
        for round_index in range(rounds):
            for name in round_order(names, round_index):
                one = clients[names.index(name)]
                cell = one.cell(calls_per_session, pool_size)
                label = name if one.bare else f"{name} sessions"
                rows.append((workload, num_sessions, label, cell))
                print_cell(workload, num_sessions, label, cell)
        return rows
    finally:
        for one in clients:
            try:
                one.close()
            finally:
                one.one.close()


def summarize(rows: list[tuple]) -> None:
    """Markdown table: medians over rounds, and throughput / p50 as ratios to bare."""
    cells: dict[tuple, list[dict]] = {}
    for workload, concurrency, name, cell in rows:
        cells.setdefault((workload, concurrency, name), []).append(cell)
    med = {
        key: {
            k: statistics.median(c[k] for c in found)
            for k in ("rps", "p50_ms", "p99_ms", "own_cpu_ms")
        }
        for key, found in cells.items()
    }
    print(
        "\n| workload | c | backend | req/s | p50 ms | p99 ms | CPU/req ms (service + programs) "
        "| req/s vs bare | p50 vs bare | statuses |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    order = [*WORKLOADS, "session calls"]
    for (workload, concurrency, name), cell in sorted(
        med.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1], kv[0][2])
    ):
        bare = med.get((workload, concurrency, "bare"))
        ratios = (
            f"{cell['rps'] / bare['rps']:.2f} | {cell['p50_ms'] / bare['p50_ms']:.2f}"
            if bare
            else "- | -"
        )
        statuses: dict[str, int] = {}
        for found in cells[(workload, concurrency, name)]:
            for status, count in found["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
        print(
            f"| {workload} | {concurrency} | {name} | {cell['rps']:.1f} | "
            f"{cell['p50_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['own_cpu_ms']:.1f} | {ratios} | "
            + ", ".join(f"{k} {v}" for k, v in statuses.items())
            + " |"
        )
    paired(cells)


def paired(cells: dict[tuple, list[dict]]) -> None:
    """Per round, each backend's throughput and CPU per request (service + programs, so that
    other users of the machine do not count) as ratios to bare's in the same round (the rounds
    ran back to back): min / median / max over the rounds. CPU once the pool's background
    work for the cell is done, and as read when the last request was answered."""
    keys = ("rps", "own_cpu_ms", "answered_cpu_ms")
    print(
        "\n| workload | c | backend | req/s vs bare | CPU/req vs bare "
        "| CPU/req vs bare, read when answered | rounds |"
    )
    print("|---|---|---|---|---|---|---|")
    for (workload, concurrency, name), found in sorted(cells.items()):
        bare = cells.get((workload, concurrency, "bare"))
        if name == "bare" or not bare:
            continue
        spreads = []
        for key in keys:
            ratios = sorted(c[key] / b[key] for c, b in zip(found, bare, strict=False) if b[key])
            spreads.append(
                f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}"
                if ratios
                else "-"
            )
        print(
            f"| {workload} | {concurrency} | {name} | {' | '.join(spreads)} | "
            f"{min(len(found), len(bare))} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["bare", "bwrap"])
    parser.add_argument("--requests", type=int, default=24, help="requests per cell (min 2c)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat each cell, alternating the backends' order; medians",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=max(CONCURRENCIES),
        help="docker: warm containers (creating one takes seconds on vfs)",
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCIES), help="clients"
    )
    parser.add_argument(
        "--docker-exec-commit",
        default=DOCKER_EXEC_COMMIT,
        help="the commit whose docker backend the `docker-exec` backend runs",
    )
    parser.add_argument(
        "--bwrap-old-commit",
        default=BWRAP_OLD_COMMIT,
        help="the commit whose bwrap backend the `bwrap-old` backend runs",
    )
    parser.add_argument(
        "--starvation",
        action="store_true",
        help="print(1) latency during eight 5 s busy loops vs idle, per backend",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=0,
        help="K sessions per backend, K client threads each calling its own, against bare "
        "one-shot runs at concurrency K (--requests calls a cell)",
    )
    parser.add_argument(
        "--client-process",
        action="store_true",
        help="the clients in a process of their own (the service's CPU column is then its own)",
    )
    parser.add_argument("--drive", help=argparse.SUPPRESS)  # ClientProcess's child
    args = parser.parse_args()
    if args.drive:
        drive_cell(args.drive)
        return
    if args.sessions:
        start = time.perf_counter()
        rows = bench_sessions(
            args.backends, args.sessions, args.requests, args.pool_size, args.rounds
        )
        print(f"{time.perf_counter() - start:.0f} s including start-up and teardown")
        summarize(rows)
        return
    if args.starvation:
        starvation(args.backends, args.pool_size, args.rounds)
        return
    start = time.perf_counter()
    rows = bench(
        args.backends,
        args.requests,
        args.workloads,
        args.pool_size,
        args.rounds,
        args.docker_exec_commit,
        tuple(args.concurrency),
        args.bwrap_old_commit,
        args.client_process,
    )
    print(f"{time.perf_counter() - start:.0f} s including start-up and teardown")
    summarize(rows)


if __name__ == "__main__":
    main()
