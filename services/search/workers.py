"""Several search worker processes behind one gRPC port and one HTTP port (`search.workers`).

    agentrl serve search ──> supervisor (this module, no servers of its own)
                              ├─ worker 0: SearchEngine + gRPC + HTTP, ports shared (SO_REUSEPORT)
                              └─ worker 1: ...

Why processes: one Python process answers with one core at a time (the GIL; BM25 scoring and
the gRPC/HTTP handling are mostly Python), so a second core only helps a second process.

Order: the supervisor binds both ports with SO_REUSEPORT without listening (it reserves them,
and resolves port 0 to a real port every worker then binds), then starts the workers, each
`python -m agentrl.search.workers` in its own session. A worker opens the index (memory-
mapped BM25 arrays and a read-only SQLite file: N workers share the page cache, not N copies),
only then binds and listens, and tells the supervisor on its stdout. The kernel spreads
connections over the listening workers, so every connection reaches a worker whose index is
open; the supervisor logs "search service ready" once all of them are.

What a reader can rely on:
- a connection stays on one worker: a client with one gRPC channel (one HTTP/2 connection)
  uses one worker; spread load with several channels (`grpc.use_local_subchannel_pool`, or
  distinct channel arguments) or HTTP connections. Connections end after
  `grpc_server.MAX_CONNECTION_AGE_MS`, so long-lived clients re-spread;
- every answer names its worker: HTTP header and gRPC trailing metadata `x-agentrl-worker-pid`;
- metrics: the workers write to a shared PROMETHEUS_MULTIPROC_DIR and any worker's /metrics
  answers for all of them (counters and histograms summed, gauges one series per `pid`);
- SIGTERM/SIGINT to the supervisor is forwarded once to every worker, each drains as a single
  service does (agentrl.common.grpc_server); a second signal is forwarded too and stops them at
  once. A worker that dies makes the supervisor stop the others and exit with status 1 (the
  orchestrator restarts the whole replica); a supervisor killed outright takes its workers
  with it (PR_SET_PDEATHSIG: they get SIGTERM and drain).

Not covered: restarting a single worker, workers on different index versions, Windows/macOS
(SO_REUSEPORT balancing and PDEATHSIG are Linux behaviour).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agentrl.common.config import SearchConfig

log = logging.getLogger(__name__)

# Below this many passages one BM25 query takes well under a millisecond: the request
# overhead dominates and extra processes cost memory and start-up for nothing.
AUTO_MIN_PASSAGES = 20_000
# Beyond ~8 workers one replica's accept queue and page cache stop being the limit; run more
# replicas instead.
MAX_AUTO_WORKERS = 8
# A worker opens a large index in seconds; a minute covers a cold page cache on slow disks.
WORKER_START_TIMEOUT_S = 120.0
# Workers drain up to grpc_server.DEFAULT_GRACE_S (20 s); give them a little more to exit.
WORKER_EXIT_TIMEOUT_S = 25.0
PID_HEADER = "x-agentrl-worker-pid"
READY_LINE = "agentrl-search-worker-ready"
# The environment that carries a worker's settings (JSON of SearchConfig) and its supervisor.
CONFIG_ENV = "AGENTRL_SEARCH_WORKER_CONFIG"
PARENT_ENV = "AGENTRL_SEARCH_WORKER_PARENT"
PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    Kubernetes CPU limit), which affinity does not show."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def resolve_workers(config: SearchConfig) -> int:
    """`search.workers`, or for 0 (auto) one per usable core (affinity and cgroup CPU quota)
    when the default index is large."""
    if config.workers:
        return config.workers
    from agentrl.search.indexer import read_manifest

    try:
        passages = int(read_manifest(config.index_dir)["num_passages"])
    except (OSError, ValueError, KeyError):
        return 1  # no readable index: the single service says what to run
    if passages < AUTO_MIN_PASSAGES:
        return 1
    return min(usable_cores(), MAX_AUTO_WORKERS)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT that never listens: it holds the port (and
    picks one for port 0) while workers bind the same port and listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(config: SearchConfig, num_workers: int) -> None:
    """Supervise `num_workers` workers on config's ports until SIGTERM/SIGINT or a worker dies."""
    from agentrl.common import shutdown

    try:
        grpc_sock = reserve_port(config.host, config.grpc_port)
        http_sock = reserve_port(config.host, config.http_port)
    except OSError as exc:
        raise SystemExit(
            f"search: cannot bind {config.host}: {exc}; free the port or change "
            "search.grpc_port / search.http_port"
        ) from None
    worker_config = config.model_copy(
        update={"grpc_port": grpc_sock.getsockname()[1], "http_port": http_sock.getsockname()[1]}
    )
    metrics_dir = tempfile.mkdtemp(prefix="agentrl-search-metrics-")
    env = {
        **os.environ,
        CONFIG_ENV: worker_config.model_dump_json(),
        PARENT_ENV: str(os.getpid()),
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    stopping = threading.Event()
    workers: list[subprocess.Popen] = []

    def forward(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping %d workers", signal.Signals(signum).name, len(workers))
        stopping.set()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    previous = shutdown.install_shutdown_handler(forward)
    ready: list[threading.Event] = []
    try:
        for _ in range(num_workers):
            # Own session: a signal to the supervisor's process group (Ctrl-C, a killpg) reaches
            # a worker once, through `forward`, not twice (the second would skip the drain).
            worker = subprocess.Popen(
                [sys.executable, "-m", "agentrl.search.workers"],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            workers.append(worker)
            ready.append(_watch_ready(worker))
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not all(r.is_set() for r in ready):
            dead = [w for w in workers if w.poll() is not None]
            if dead or stopping.is_set() or time.monotonic() > deadline:
                if not stopping.is_set():
                    forward(signal.SIGTERM, None)
                _wait_all(workers)
                if stopping.is_set() and not dead:
                    return
                raise SystemExit(
                    f"search: worker {dead[0].pid if dead else ''} did not start "
                    f"(exit {dead[0].returncode if dead else 'timeout'}); its log above says why"
                )
            time.sleep(0.05)
        host = f"[{config.host}]" if ":" in config.host else config.host
        log.info(
            "search service ready",
            extra={
                "grpc": f"{host}:{worker_config.grpc_port}",
                "http": f"http://{host}:{worker_config.http_port}",
                "workers": num_workers,
                "pids": [w.pid for w in workers],
            },
        )
        while not stopping.is_set():
            dead = [w for w in workers if w.poll() is not None]
            if dead:
                log.error(
                    "search worker %d exited (status %s); stopping the others",
                    dead[0].pid,
                    dead[0].returncode,
                )
                forward(signal.SIGTERM, None)
                _wait_all(workers)
                raise SystemExit(1)
            time.sleep(0.2)
        _wait_all(workers)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        grpc_sock.close()
        http_sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _watch_ready(worker: subprocess.Popen) -> threading.Event:
    """Set once the worker prints READY_LINE; keeps reading its stdout so it never blocks."""
    event = threading.Event()

    def read() -> None:
        for line in worker.stdout:
            if line.strip() == READY_LINE:
                event.set()

    threading.Thread(target=read, name=f"search-worker-{worker.pid}", daemon=True).start()
    return event


def _wait_all(workers: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
    for worker in workers:
        try:
            worker.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("search worker %d did not drain in time; killing it", worker.pid)
            worker.kill()
            worker.wait()


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> None:
    """One worker: open the index, serve on the shared ports, drain on SIGTERM."""
    from agentrl.common.logging import setup_logging
    from agentrl.common.shutdown import hold_shutdown_signals

    hold_shutdown_signals()
    setup_logging("search", json=os.environ.get("AGENTRL_LOG_JSON", "") not in ("", "0"))
    _die_with_parent(int(os.environ[PARENT_ENV]))
    config = SearchConfig.model_validate_json(os.environ[CONFIG_ENV])

    from agentrl.search.main import start_search_service

    try:
        service = start_search_service(config, reuse_port=True)
    except ValueError as exc:  # no index, a damaged one: say what to run, no traceback
        log.error("cannot open the search index: %s", exc)
        raise SystemExit(f"search: {exc}") from None
    service.grpc_server.install_signal_handlers()
    print(READY_LINE, flush=True)
    try:
        service.grpc_server.wait()
    finally:
        service.stop(0)


if __name__ == "__main__":
    worker_main()
