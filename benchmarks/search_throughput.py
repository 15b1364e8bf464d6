"""Search service throughput against in-process BM25, with 1 and 2 worker processes, beside the
per-call floor of the same gRPC server.

    .venv/bin/python benchmarks/search_throughput.py [--passages 20000 [200000 ...]] \
        [--rounds 3] [--seconds 4] [--client-procs 2] [--work-dir DIR]

For each `--passages` size (several make a sweep; `--work-dir` keeps the worlds between runs),
one QA world (BM25) is generated and indexed in a child process (its time, peak memory and
index size are printed), then two replicas of the real service are started through `agentrl
serve search`, one with `search.workers: 1` and one with `2` (result cache off, so every
request searches; top_k 3, one question of the world per request). Each round measures, in
rotating order (benchmarks/paired.py):

- `inproc`: `SearchIndex.retrieve([q], 3)` called in a loop in one process (the baseline);
- `floor w1 c1`: the standard `grpc.health.v1.Health/Check` of the `workers: 1` replica, one
  client thread: a trivial handler on the same server, threads and interceptors, answering a
  two-byte response. What any call to this server costs before search does anything;
- `w1 c1`, `w2 c1`: gRPC Retrieve, one client thread;
- `w1 c32`, `w2 c32`: gRPC, 32 client threads, each with a channel of its own (its own TCP
  connection: `grpc.use_local_subchannel_pool`), spread over `--client-procs` processes so the
  clients' GIL is not the limit;
- `w2 c32 1ch`: as `w2 c32` but every thread of a client process shares one channel, as a
  client that keeps one channel does: the connection decides the worker, so this shows
  whether several channels are needed for the load to spread.

Prints queries/s, p50 and CPU per query of the serving processes (from /proc: the workers,
or the single service process) per path and round, then each path's ratio to `inproc` of the
same round (min / median / max), for queries/s and for CPU per query, and the c=1 ceiling the
floor leaves: a call that costs the floor's round trip plus an in-process retrieve gives at
most floor / (floor + inproc) of in-process queries/s. On a loaded machine the CPU ratio is
the steadier figure: one in-process loop gets one process's share of the cores while client
and service get two or more, so a throughput ratio above 1 there is the scheduler's doing,
not a service faster than its index. The clients run on the same cores as the service: on a
2-core machine a c=32 row measures service + 32 clients sharing two cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from paired import paired_rounds, ratio_line, spread

TOP_K = 3
# Client processes (started once, grpc imported) connect before the window opens.
CLIENT_START_S = 1.0
# Questions generated per world: queries enough that a round rarely repeats one.
NUM_QUESTIONS = 2_000


def start_replica(index_dir: Path, workers: int) -> tuple[subprocess.Popen, str, list[int]]:
    """The service process, its gRPC address and the pids that serve (workers, or itself)."""
    env = {
        **os.environ,
        "AGENTRL__SEARCH__GRPC_PORT": "0",
        "AGENTRL__SEARCH__HTTP_PORT": "0",
        "AGENTRL__SEARCH__INDEX_DIR": str(index_dir),
        "AGENTRL__SEARCH__CACHE_SIZE": "0",
        "AGENTRL__SEARCH__MAX_CONCURRENCY": "64",
        "AGENTRL__SEARCH__WORKERS": str(workers),
    }
    env.pop("AGENTRL_AUTH_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "agentrl.common.cli", "serve", "search"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:
        if "search service ready" in line:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            pids = (
                [int(p) for p in re.findall(r"\d+", line.split("pids=")[1])]
                if ("pids=" in line)
                else [process.pid]
            )
            return process, re.search(r"grpc=(\S+)", line).group(1), pids
    process.kill()
    raise RuntimeError(f"the search service (workers={workers}) did not report ready")


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def rss_mb(pids: list[int]) -> tuple[float, float]:
    """(anonymous, file-backed) resident MB summed over `pids`: file pages are the mapped index
    and libraries, shared between workers through the page cache."""
    anon = file = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon += int(line.split()[1])
            elif line.startswith("RssFile:"):
                file += int(line.split()[1])
    return anon / 1024, file / 1024


def client_process(
    address: str,
    queries: list[str],
    threads: int,
    shared: bool,
    start_at: float,
    seconds: float,
    floor: bool = False,
) -> list[float]:
    """Latencies of the calls `threads` threads complete in [start_at, start_at + seconds):
    Retrieve of one question, or with `floor` the server's health Check."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agentrl.common.grpc_client import create_channel
    from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc

    def channel():
        return create_channel(address, token=None, options=[("grpc.use_local_subchannel_pool", 1)])

    def caller(ch):
        if floor:
            check = health_pb2_grpc.HealthStub(ch).Check
            request = health_pb2.HealthCheckRequest()
            return lambda _query: check(request)
        retrieve = search_pb2_grpc.SearchServiceStub(ch).Retrieve
        return lambda query: retrieve(search_pb2.RetrieveRequest(queries=[query], top_k=TOP_K))

    one = channel() if shared else None
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def loop(slot: int) -> None:
        call = caller(one or channel())
        i = slot
        call(queries[i])  # connect
        time.sleep(max(start_at - time.time(), 0))
        end = start_at + seconds
        while True:
            began = time.time()
            call(queries[i % len(queries)])
            done = time.time()
            if done > end:
                return
            latencies[slot].append(done - began)
            i += threads

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [v for per in latencies for v in per]


def grpc_rate(
    pool,
    server_pids: list[int],
    address: str,
    queries: list[str],
    concurrency: int,
    procs: int,
    shared: bool,
    seconds: float,
    floor: bool = False,
) -> tuple[float, float, float]:
    """(queries/s, p50 ms, server CPU s per call) of `concurrency` threads over `procs` client
    processes of `pool`."""
    procs = min(procs, concurrency)
    start_at = time.time() + CLIENT_START_S
    parts = [
        pool.apply_async(
            client_process,
            (address, queries, concurrency // procs, shared, start_at, seconds, floor),
        )
        for _ in range(procs)
    ]
    time.sleep(max(start_at - time.time(), 0))
    cpu_before = cpu_s(server_pids)
    latencies = [v for part in parts for v in part.get()]
    server_cpu = cpu_s(server_pids) - cpu_before  # the window plus the last calls' tail
    return len(latencies) / seconds, statistics.median(latencies) * 1e3, server_cpu / len(latencies)


def inproc_rate(index, queries: list[str], seconds: float) -> tuple[float, float, float]:
    latencies = []
    cpu_before = time.process_time()
    end = time.perf_counter() + seconds
    i = 0
    while (began := time.perf_counter()) < end:
        index.retrieve([queries[i % len(queries)]], TOP_K, "bm25")
        latencies.append(time.perf_counter() - began)
        i += 1
    cpu = time.process_time() - cpu_before
    return len(latencies) / seconds, statistics.median(latencies) * 1e3, cpu / len(latencies)


def build_in_child(world: Path, passages: int) -> float:
    """Generate and index the world (search_bench.build_world prints the times); returns this
    process's peak resident MB, so the build's memory is measured apart from the benchmark's."""
    from search_bench import build_world

    build_world(world, passages, NUM_QUESTIONS, dense=False)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_size(args: argparse.Namespace, work: Path, passages: int, pool) -> None:
    """Build (or reuse) one world, then run every path for `args.rounds` rounds and print."""
    from agentrl.search.qa_questions import read_questions
    from agentrl.search.retriever import SearchIndex

    world = work / f"world-{passages}"
    if not (world / "index").exists():
        with multiprocessing.get_context("spawn").Pool(1) as builder:
            peak_mb = builder.apply(build_in_child, (world, passages))
        print(f"build peak memory {peak_mb:.0f} MB (generation and indexing, one process)")
    queries = [q["question"] for q in read_questions(world / "train.jsonl")]
    index = SearchIndex(world / "index")
    print(
        f"\n== {index.num_passages} passages; {os.cpu_count()} cores; "
        f"{args.seconds:.0f} s per path ==",
        flush=True,
    )

    started = time.perf_counter()
    replicas = {w: start_replica(world / "index", w) for w in (1, 2)}
    print(f"replicas w1 and w2 ready in {time.perf_counter() - started:.1f} s", flush=True)
    p50s: dict[str, list[float]] = {}
    cpu_per_query: dict[str, list[float]] = {}

    def path(fn):
        def run(_round: int) -> float:
            rate, p50, cpu = fn()
            p50s.setdefault(name_of[run], []).append(p50)
            cpu_per_query.setdefault(name_of[run], []).append(cpu)
            return rate

        return run

    def grpc_path(workers: int, concurrency: int, shared: bool = False, floor: bool = False):
        _, address, pids = replicas[workers]
        procs = args.client_procs if concurrency > 1 else 1
        return path(
            lambda: grpc_rate(
                pool, pids, address, queries, concurrency, procs, shared, args.seconds, floor
            )
        )

    paths = {
        "inproc": path(lambda: inproc_rate(index, queries, args.seconds)),
        "floor w1 c1": grpc_path(1, 1, floor=True),
        "w1 c1": grpc_path(1, 1),
        "w2 c1": grpc_path(2, 1),
        "w1 c32": grpc_path(1, 32),
        "w2 c32": grpc_path(2, 32),
        "w2 c32 1ch": grpc_path(2, 32, shared=True),
    }
    name_of = {fn: name for name, fn in paths.items()}
    try:
        rates = paired_rounds(
            args.rounds,
            paths,
            on_result=lambda r, name, rate: print(
                f"round {r} {name:<11} {rate:8.0f} q/s  p50 {p50s[name][-1]:7.2f} ms  "
                f"server CPU/query {cpu_per_query[name][-1] * 1e3:6.3f} ms",
                flush=True,
            ),
        )
        for workers, (_, _, pids) in replicas.items():
            anon, file = rss_mb(pids)
            print(f"w{workers} resident: {anon:.0f} MB anonymous + {file:.0f} MB file-backed")
    finally:
        for process, _, _ in replicas.values():
            process.terminate()
            process.wait(timeout=60)
    print()
    for name in paths:
        if name != "inproc":
            print(ratio_line(f"{name} / inproc", rates[name], rates["inproc"]))
    for a, b in (("w2 c32", "w1 c32"), ("w2 c1", "w1 c1"), ("w2 c32", "w2 c32 1ch")):
        print(ratio_line(f"{a} / {b}", rates[a], rates[b]))
    # One c=1 call is at least the floor's round trip plus the search itself.
    ceiling = [f / (f + i) for f, i in zip(rates["floor w1 c1"], rates["inproc"], strict=True)]
    print(
        "c=1 ceiling the floor leaves, floor / (floor + inproc): "
        "{:.2f} / {:.2f} / {:.2f} (min / median / max)".format(*spread(ceiling))
    )
    print("\nserver CPU per query / in-process CPU per query (the per-request overhead):")
    for name in paths:
        if name != "inproc":
            print(ratio_line(f"{name}", cpu_per_query[name], cpu_per_query["inproc"]))
    medians = {name: statistics.median(v) * 1e3 for name, v in cpu_per_query.items()}
    print(
        f"median CPU per query: in-process {medians['inproc']:.3f} ms, floor call "
        f"{medians['floor w1 c1']:.3f} ms, w1 c1 {medians['w1 c1']:.3f} ms; w1 c1 beyond "
        f"floor + in-process: {medians['w1 c1'] - medians['floor w1 c1'] - medians['inproc']:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--passages",
        type=int,
        nargs="+",
        default=[20_000],
        help="world sizes to measure, one after another (e.g. 20000 200000 1000000)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    if min(args.passages) < 200:
        parser.error("--passages: a QA world has at least 200 passages")

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="search-throughput-"))
    pool = multiprocessing.get_context("spawn").Pool(args.client_procs)
    try:
        for passages in args.passages:
            measure_size(args, work, passages, pool)
    finally:
        pool.terminate()


if __name__ == "__main__":
    main()
