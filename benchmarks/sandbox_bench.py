"""Sandbox throughput and latency: backends against bare `python3 -c`, driven the same way.

Each backend runs behind a real gRPC server on 127.0.0.1 (the service's own code path:
validation, admission, metrics); `bare` is a backend that runs `python3 -c CODE` with no
isolation at all, through the same server, client, timeout and output handling. For every
workload and concurrency it prints requests/s, p50 and p99 latency and the statuses seen.

    .venv/bin/python benchmarks/sandbox_bench.py                 # bwrap and bare
    .venv/bin/python benchmarks/sandbox_bench.py --backends bwrap bare docker
    .venv/bin/python benchmarks/sandbox_bench.py --backends docker --pool-size 32

Workloads: `print(1)`, a ~50 ms CPU loop, an import-heavy snippet, a 1 s timeout, and 10 MB of
output (max_output_bytes is set to 16 MB so it must come back whole, status ok).

docker needs the engine and the image (AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh, then
bash services/sandbox/image/build.sh). Its pool is filled before each cell (a timed-out run
recycles its container), so the figures are warm-pool latencies; a cell at a concurrency above
--pool-size also measures waiting for a container.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from agentrl.common.config import SandboxConfig
from agentrl.common.grpc_server import serve
from agentrl.sandbox.capture import drive, spawn
from agentrl.sandbox.client import SandboxClient
from agentrl.sandbox.executor import BACKENDS, Sandbox
from agentrl.sandbox.interface import Backend, ExecutionRequest, ExecutionResult, Status
from agentrl.sandbox.service import SERVICE_NAME, SandboxServicer, register

# 10 MB of output must come back whole: the cap sits above it.
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
CONCURRENCIES = (1, 8, 32)
# A docker pool re-creates recycled containers in the background (seconds each on vfs).
POOL_REFILL_WAIT_S = 300.0
WORKLOADS = {
    "print(1)": ("print(1)", 10.0),
    "cpu ~50ms": ("n = 0\nfor i in range(1_300_000):\n    n += i\nprint(n)", 10.0),
    "imports": (("import json, decimal, asyncio, email.parser, http.client, sqlite3, "
                 "xml.etree.ElementTree, unittest, argparse, dataclasses\nprint('ok')"), 10.0),
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
        captured = drive(proc, stdin=request.stdin, timeout_s=request.timeout_s,
                         max_output_bytes=self.config.max_output_bytes)
        status = (Status.TIMEOUT if captured.timed_out else Status.OUTPUT_LIMIT
                  if captured.output_exceeded else Status.OK if captured.returncode == 0
                  else Status.ERROR)
        return ExecutionResult(status, exit_code=captured.returncode,
                               stdout=captured.stdout.decode(errors="replace"),
                               stderr=captured.stderr.decode(errors="replace"),
                               wall_time_s=captured.wall_time_s, backend=self.name)


def run_cell(client: SandboxClient, code: str, timeout_s: float, concurrency: int,
             num_requests: int) -> dict:
    def one(_: int) -> tuple[float, str, int]:
        start = time.perf_counter()
        result = client.execute(code, timeout_s=timeout_s)
        return time.perf_counter() - start, result.status.value, len(result.stdout)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(min(concurrency, 4))))  # warm up connections and slots
        start = time.perf_counter()
        samples = list(pool.map(one, range(num_requests)))
        elapsed = time.perf_counter() - start
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
    }


def wait_for_pool(backend: Backend, pool_size: int, timeout_s: float = POOL_REFILL_WAIT_S) -> None:
    """Let a docker pool refill (recycled containers are re-created in the background)."""
    deadline = time.monotonic() + timeout_s
    while backend.name == "docker" and backend.pool_size() < pool_size:
        if time.monotonic() > deadline:
            print(f"  (pool at {backend.pool_size()}/{pool_size} after {timeout_s:g} s)")
            return
        time.sleep(0.1)


def bench_backend(name: str, num_requests: int, workloads: list[str],
                  pool_size: int = max(CONCURRENCIES)) -> list[tuple]:
    config = SandboxConfig(backend="docker" if name == "docker" else "bwrap",
                           max_concurrency=max(CONCURRENCIES), queue_size=256,
                           max_output_bytes=MAX_OUTPUT_BYTES, max_timeout_s=60,
                           pool_size=pool_size)
    backend = BareBackend(config) if name == "bare" else BACKENDS[config.backend](config)
    sandbox = Sandbox(config, backend=backend)
    servicer = SandboxServicer(sandbox)
    server = serve(register(servicer), [SERVICE_NAME], port=0, token=None,
                   max_workers=config.max_concurrency + config.queue_size + 8)
    client = SandboxClient(server.address, token=None)
    rows = []
    try:
        for workload in workloads:
            code, timeout_s = WORKLOADS[workload]
            for concurrency in CONCURRENCIES:
                count = concurrency if workload == "timeout 1s" else max(num_requests,
                                                                          2 * concurrency)
                wait_for_pool(backend, pool_size)
                cell = run_cell(client, code, timeout_s, concurrency, count)
                rows.append((workload, concurrency, name, cell))
                print(f"{workload:13} c={concurrency:<3} {name:6} {cell['rps']:7.1f} req/s  "
                      f"p50 {cell['p50_ms']:7.1f} ms  p99 {cell['p99_ms']:7.1f} ms  "
                      f"{cell['statuses']} out={cell['stdout_bytes']}", flush=True)
    finally:
        client.close()
        server.stop(0)
        servicer.close()
        sandbox.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["bare", "bwrap"])
    parser.add_argument("--requests", type=int, default=24, help="requests per cell (min 2c)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--pool-size", type=int, default=max(CONCURRENCIES),
                        help="docker: warm containers (creating one takes seconds on vfs)")
    args = parser.parse_args()
    rows = []
    for name in args.backends:
        start = time.perf_counter()
        rows += bench_backend(name, args.requests, args.workloads, args.pool_size)
        print(f"{name}: {time.perf_counter() - start:.0f} s including start-up and teardown")
    print("\n| workload | c | backend | req/s | p50 ms | p99 ms | statuses |")
    print("|---|---|---|---|---|---|---|")
    for workload, concurrency, name, cell in sorted(rows, key=lambda r: (
            list(WORKLOADS).index(r[0]), r[1], r[2])):
        statuses = ", ".join(f"{k} {v}" for k, v in cell["statuses"].items())
        print(f"| {workload} | {concurrency} | {name} | {cell['rps']:.1f} | "
              f"{cell['p50_ms']:.1f} | {cell['p99_ms']:.1f} | {statuses} |")


if __name__ == "__main__":
    main()
