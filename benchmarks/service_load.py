"""Load generator for the CPU services: N concurrent clients against 1..R replicas of the
sandbox, search or reward service, over gRPC with the clients the rollout worker uses; prints
calls/s in all and per replica at each replica count (the numbers behind docs/scaling.md's
replica counts).

Against a deployment, name each replica's gRPC address (a pod's, e.g. through
`kubectl port-forward pod/<pod> 50051`, or `<pod-ip>:50051` from inside the cluster: a
Service address would let kube-proxy pick the pods). With `--local R` it starts R replicas
here (`agentrl serve <service>` on free loopback ports; search over a generated corpus). The
token comes from AGENTRL_AUTH_TOKEN as for every client.

    python benchmarks/service_load.py --service sandbox --local 2 --clients 16
    python benchmarks/service_load.py --service search --targets 10.0.0.5:50053,10.0.0.6:50053

Each client is a thread with its own channel to one replica (clients spread round-robin over
the replicas of the count being measured) calling for `--duration-s` after one warm-up call:
a sandbox client runs a short Python program, a search client a BM25 query, a reward client
scores a math answer. Printed per replica count: calls/s, calls/s per replica, p50/p95
latency, errors, and the client process's CPU per call (on a machine that shares its cores
with the replicas this is the part of the cost that is the load generator's). Bounded: at most
MAX_CLIENTS clients and MAX_DURATION_S per point.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from agentrl.common import grpc_client
from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.reward.client import RewardClient
from agentrl.sandbox.client import SandboxClient

MAX_CLIENTS = 256
MAX_DURATION_S = 120.0
READY_TIMEOUT_S = 300.0
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "forest", "light", "iron"]


def caller(service: str, target: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(one call with a per-call seed, close) for one client of `service` at `target`."""
    if service == "sandbox":
        client = SandboxClient(target)
        return (lambda i: client.execute(f"print(sum(range({i % 1000})))")), client.close
    if service == "reward":
        reward = RewardClient(target)
        return (lambda i: reward.score("math", f"\\boxed{{{i % 7}}}", str(i % 5))), reward.close
    channel = grpc_client.create_channel(target, default_timeout_s=60)
    stub = search_pb2_grpc.SearchServiceStub(channel)

    def search(i: int) -> None:
        words = random.Random(i).sample(WORDS, 3)
        stub.Retrieve(search_pb2.RetrieveRequest(queries=[" ".join(words)], top_k=3))

    return search, channel.close


def client_thread(service, target, deadline_box, latencies, errors, seed) -> None:
    call, close = caller(service, target)
    try:
        call(seed)  # warm-up: connection and the replica's first-call costs
        calls = 0
        while time.monotonic() < deadline_box[0]:
            start = time.perf_counter()
            try:
                call(seed + calls)
                latencies.append(time.perf_counter() - start)
            except grpc.RpcError:
                errors.append(1)
            calls += 1
    finally:
        close()


def measure(args, targets: list[str]) -> None:
    latencies: list[float] = []
    errors: list[int] = []
    deadline_box = [float("inf")]  # set once every client has warmed up
    threads = [
        threading.Thread(
            target=client_thread,
            args=(args.service, targets[i % len(targets)], deadline_box, latencies, errors, i),
            daemon=True,
        )
        for i in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the warm-up calls
    latencies.clear()
    errors.clear()
    cpu_start, start = time.process_time(), time.monotonic()
    deadline_box[0] = start + args.duration_s
    for thread in threads:
        thread.join(args.duration_s + 120)
    wall_s, cpu_s = time.monotonic() - start, time.process_time() - cpu_start
    done = list(latencies)
    rate = len(done) / wall_s
    p50, p95 = (
        (statistics.quantiles(done, n=20)[i] * 1e3 for i in (9, 18)) if len(done) > 1 else (0, 0)
    )
    print(
        f"  {len(targets):>3} replicas  {rate:>8.1f} calls/s  {rate / len(targets):>8.1f} per "
        f"replica  p50 {p50:>7.1f} ms  p95 {p95:>7.1f} ms  errors {len(errors)}  client "
        f"{1e3 * cpu_s / max(len(done), 1):.2f} ms CPU/call | load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def search_index(root: Path) -> Path:
    corpus = root / "corpus.jsonl"
    rng = random.Random(0)
    with corpus.open("w") as out:
        for i in range(2000):
            text = " ".join(rng.choice(WORDS) for _ in range(40))
            out.write(json.dumps({"id": str(i), "title": f"passage {i}", "text": text}) + "\n")
    index = root / "index"
    subprocess.run(
        [sys.executable, "-m", "agentrl.common.cli", "search", "index", str(corpus), "--out",
         str(index)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return index


@contextmanager
def local_replicas(service: str, count: int) -> Iterator[list[str]]:
    """`count` replicas of `service` on free loopback ports, stopped (SIGTERM) on exit."""
    root = Path(tempfile.mkdtemp(prefix="service-load-"))
    section = f"AGENTRL__{service.upper()}__"
    env = {**os.environ, "AGENTRL_LOG_JSON": "false"}
    if service == "search":
        env[section + "INDEX_DIR"] = str(search_index(root))
    servers, targets = [], []
    try:
        for i in range(count):
            grpc_port, http_port = free_port(), free_port()
            ports = {section + "GRPC_PORT": str(grpc_port), section + "HTTP_PORT": str(http_port)}
            with (root / f"{service}-{i}.log").open("wb") as log:
                servers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "agentrl.common.cli", "serve", service],
                        env={**env, **ports},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        cwd=root,
                    )
                )
            targets.append(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        for server, target in zip(servers, targets, strict=True):
            channel = grpc.insecure_channel(target)
            try:
                grpc.channel_ready_future(channel).result(timeout=deadline - time.monotonic())
            except grpc.FutureTimeoutError:
                log_text = next(root.glob(f"{service}-*.log")).read_text(errors="replace")
                raise SystemExit(f"{service} at {target} did not start:\n{log_text[-2000:]}")
            finally:
                channel.close()
            if server.poll() is not None:
                raise SystemExit(f"{service} at {target} exited with {server.returncode}")
        yield targets
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def given(targets: list[str]) -> Iterator[list[str]]:
    yield targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=("sandbox", "search", "reward"), required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--targets", help="comma-separated gRPC addresses, one per replica")
    where.add_argument("--local", type=int, help="start this many replicas here")
    parser.add_argument("--replicas", help="replica counts to measure (default: 1..all)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds/point")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration_s <= MAX_DURATION_S:
        parser.error(f"--clients must be 1..{MAX_CLIENTS}, --duration-s in (0, {MAX_DURATION_S}]")
    if args.local is not None and not 1 <= args.local <= 16:
        parser.error("--local must be 1..16")
    # `timeout`/Ctrl-C: unwind, so local replicas are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    context = (
        given(args.targets.split(",")) if args.targets else local_replicas(args.service, args.local)
    )
    with context as targets:
        counts = (
            [int(c) for c in args.replicas.split(",")]
            if args.replicas
            else list(range(1, len(targets) + 1))
        )
        if not all(1 <= c <= len(targets) for c in counts):
            parser.error(f"--replicas must lie in 1..{len(targets)}")
        print(f"{args.service}: {args.clients} clients, {args.duration_s:.0f} s per point")
        for count in counts:
            measure(args, targets[:count])


if __name__ == "__main__":
    main()
