"""Load generator for the control plane: many simulated rollout workers and one simulated
trainer against one Redis, through the real `StreamQueue` (the numbers behind docs/scaling.md).

Each simulated worker does what a rollout worker does per task, minus the generation: read
one `RolloutTask` from the prompts stream (consumer group `rollout`), check it is not done,
publish a `Group` of `--samples` trajectories x `--tokens` tokens (pre-serialised: its
encoding cost is measured separately below), complete the task. The simulated trainer
admits tasks while fewer than 2 per worker are unconsumed, capped at `--max-queued-mb` of
groups (the admission control bounds Redis memory the same way), reads groups in batches,
completes and trims them. Workers are
threads spread over `--processes` processes; everything runs on loopback against a private
`redis-server` (append-only file, fsync every second, as the chart runs it) unless
`--redis-url` names one.

For each point (tokens, workers), Redis's own CPU seconds (INFO used_cpu_*, the whole
redis-server process) are read over two windows: idle, the workers polling an empty stream
(blocking reads of 500 ms, as a rollout worker's), then loaded. Redis's CPU is modelled as
idle polling (a share of a core that grows with the workers) plus a cost per group moved; the
printed ceiling is the groups/s one Redis core holds with that many workers: (1 - idle share)
/ cost per group. CPU seconds, unlike the groups/s the clients reach, hardly depend on how
loaded the client machine is: on a 2-core machine the clients share the cores with Redis and
reach far less than the ceiling ("busy": Redis's share of a core while loaded). Also printed:
the CPU one group costs to encode (a worker) and decode (the trainer's rank 0).

    python benchmarks/control_plane_load.py --workers 1,8,32 --tokens 2048,32768 --duration-s 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from multiprocessing.synchronize import Event

import redis
from bench_streams import make_group

from agentrl.common.inference.launcher import free_port
from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout
from agentrl.common.streams import StreamQueue
from agentrl.proto.core.v1 import group_pb2, task_pb2

MAX_WORKERS = 512  # simulated workers per point (threads; bounded: loopback only)
WORKER_READ_BLOCK_MS = 500  # a rollout worker's blocking read (services/rollout/worker.py)
MAX_DURATION_S = 120.0
WARMUP_S = 2.0


def group_payload(samples: int, tokens: int) -> bytes:
    import bench_streams

    bench_streams.NUM_SAMPLES, bench_streams.NUM_TOKENS = samples, tokens
    return make_group(random.Random(0), 0).SerializeToString()


def worker_thread(url: str, run_id: str, payload: bytes, stop: Event, ready) -> None:
    layout = RunLayout(run_id)
    prompts = StreamQueue(url, layout.prompts, PROMPTS_GROUP, consumer=uuid.uuid4().hex[:12])
    groups = StreamQueue(url, layout.groups, GROUPS_GROUP)
    prompts.client.ping()
    groups.client.ping()
    with ready.get_lock():
        ready.value += 1
    while not stop.is_set():
        for entry in prompts.read(count=1, block_ms=WORKER_READ_BLOCK_MS):
            if prompts.is_done(entry):
                prompts.ack(entry)
                continue
            groups.publish(payload, entry.key)
            prompts.complete(entry)
    prompts.close()
    groups.close()


def worker_process(
    url: str, run_id: str, threads: int, samples: int, tokens: int, stop, ready
) -> None:
    payload = group_payload(samples, tokens)
    pool = [
        threading.Thread(
            target=worker_thread, args=(url, run_id, payload, stop, ready), daemon=True
        )
        for _ in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


class Trainer:
    """Admits tasks while fewer than `outstanding` are unconsumed; consumes groups."""

    def __init__(self, url: str, run_id: str, outstanding: int, batch: int) -> None:
        layout = RunLayout(run_id)
        self.prompts = StreamQueue(url, layout.prompts, PROMPTS_GROUP, maxlen=100_000)
        self.groups = StreamQueue(url, layout.groups, GROUPS_GROUP, consumer="trainer")
        self.prompts.ensure_group()
        self.groups.ensure_group()
        self.outstanding, self.batch = outstanding, batch
        self.admitted = self.consumed = 0
        self.bytes_read = 0

    def admit(self) -> None:
        while self.admitted - self.consumed < self.outstanding:
            key = f"task-{self.admitted}"
            task = task_pb2.RolloutTask(task_id=key, idempotency_key=key, num_samples=16)
            self.prompts.publish(task, key)
            self.admitted += 1

    def consume(self) -> None:
        entries = self.groups.read(count=self.batch, block_ms=200)
        fresh = []
        for entry in entries:
            if self.groups.is_done(entry):
                self.groups.ack(entry)  # a duplicate: never trained twice
            else:
                fresh.append(entry)
        if fresh:
            self.groups.complete(fresh)
            self.groups.trim()
        self.consumed += len(entries)
        self.bytes_read += sum(len(e.payload) for e in entries)

    def close(self) -> None:
        self.prompts.delete()
        self.groups.delete()
        self.prompts.close()
        self.groups.close()


def redis_cpu(client: redis.Redis) -> tuple[float, float]:
    """(Redis main process CPU seconds, AOF rewrite children's CPU seconds) so far."""
    info = client.info("cpu")
    main = info["used_cpu_sys"] + info["used_cpu_user"]
    return main, info["used_cpu_sys_children"] + info["used_cpu_user_children"]


def run_point(args, url: str, tokens: int, workers: int, payload_bytes: int) -> None:
    run_id = f"load-{uuid.uuid4().hex[:8]}"
    outstanding = max(8, min(2 * workers, int(args.max_queued_mb * 1e6 // payload_bytes)))
    trainer = Trainer(url, run_id, outstanding, args.batch)
    processes = min(args.processes, workers)
    context = mp.get_context("spawn")
    stop, ready = context.Event(), context.Value("i", 0)
    children = []
    for index in range(processes):
        threads = workers // processes + (index < workers % processes)
        child = context.Process(
            target=worker_process,
            args=(url, run_id, threads, args.samples, tokens, stop, ready),
            daemon=True,
        )
        child.start()
        children.append(child)
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 120
        while ready.value < workers:
            assert time.monotonic() < deadline, f"{ready.value}/{workers} workers started"
            time.sleep(0.1)
        # Idle: every worker polls the empty prompts stream, as workers wait between steps.
        time.sleep(WORKER_READ_BLOCK_MS / 1000)
        idle_start_s, (idle_start_cpu, _) = time.monotonic(), redis_cpu(client)
        time.sleep(args.idle_s)
        idle_fraction = (redis_cpu(client)[0] - idle_start_cpu) / (time.monotonic() - idle_start_s)
        # Loaded: until the first group arrives, then a warm-up, then the measured window.
        while trainer.consumed == 0 and time.monotonic() < deadline:
            trainer.admit()
            trainer.consume()
        warm_until = time.monotonic() + WARMUP_S
        while time.monotonic() < warm_until:
            trainer.admit()
            trainer.consume()
        start_s, start_n, start_bytes = time.monotonic(), trainer.consumed, trainer.bytes_read
        start_cpu, start_child_cpu = redis_cpu(client)
        while time.monotonic() - start_s < args.duration_s:
            trainer.admit()
            trainer.consume()
        wall_s = time.monotonic() - start_s
        cpu, child_cpu = redis_cpu(client)
        groups, read_bytes = trainer.consumed - start_n, trainer.bytes_read - start_bytes
        cpu_s, child_s = cpu - start_cpu, child_cpu - start_child_cpu
    finally:
        stop.set()
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
        trainer.close()
        client.close()
    # Redis CPU = idle polling (with this many workers) + a cost per group moved.
    per_group_ms = 1e3 * max(cpu_s - idle_fraction * wall_s, 0.0) / max(groups, 1)
    ceiling = (1 - idle_fraction) * 1e3 / per_group_ms if per_group_ms else float("inf")
    print(
        f"  {workers:>4} workers  {groups / wall_s:>7.1f} groups/s "
        f"{read_bytes / wall_s / 1e6:>6.1f} MB/s read | redis: idle polling "
        f"{100 * idle_fraction:>4.1f} % of a core, {per_group_ms:>5.2f} ms CPU/group -> "
        f"{ceiling:>6.0f} groups/s per core ({ceiling * payload_bytes / 1e6:>5.0f} MB/s); "
        f"busy {100 * cpu_s / wall_s:>3.0f} %, AOF rewrites {child_s:.1f} CPU-s | "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def codec_cost_ms(payload: bytes, rounds: int = 5) -> tuple[float, float]:
    """Min over `rounds` of one group's encode and decode CPU time, in ms."""
    group = group_pb2.Group.FromString(payload)
    encode, decode = [], []
    for _ in range(rounds):
        start = time.process_time()
        group.SerializeToString()
        encode.append(time.process_time() - start)
        start = time.process_time()
        group_pb2.Group.FromString(payload)
        decode.append(time.process_time() - start)
    return 1e3 * min(encode), 1e3 * min(decode)


@contextmanager
def private_redis():
    """A redis-server on a free loopback port, append-only (everysec) in a temporary dir."""
    port, workdir = free_port(), tempfile.mkdtemp(prefix="control-plane-load-")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,8,32", help="simulated workers per point")
    parser.add_argument("--tokens", default="2048,32768", help="tokens per trajectory")
    parser.add_argument("--samples", type=int, default=16, help="trajectories per group")
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured seconds/point")
    parser.add_argument("--idle-s", type=float, default=3.0, help="idle polling measured first")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--batch", type=int, default=16, help="groups per trainer read")
    parser.add_argument("--max-queued-mb", type=float, default=256.0, help="unconsumed cap")
    parser.add_argument("--redis-url", help="an existing Redis (default: a private one)")
    args = parser.parse_args()
    # `timeout`/Ctrl-C: unwind, so the private redis-server and the workers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workers = [int(w) for w in args.workers.split(",")]
    tokens = [int(t) for t in args.tokens.split(",")]
    if not all(1 <= w <= MAX_WORKERS for w in workers) or min(tokens) <= 0:
        parser.error(f"--workers must be 1..{MAX_WORKERS} each, --tokens positive")
    if not 0 < args.duration_s <= MAX_DURATION_S or min(args.processes, args.batch) <= 0:
        parser.error(f"--duration-s must be in (0, {MAX_DURATION_S:.0f}]; --processes, --batch > 0")
    with private_redis() if args.redis_url is None else _given(args.redis_url) as url:
        for count in tokens:
            payload = group_payload(args.samples, count)
            encode_ms, decode_ms = codec_cost_ms(payload)
            print(
                f"Group {args.samples} x {count} tokens, {len(payload) / 1e6:.2f} MB: encode "
                f"{encode_ms:.1f} ms, decode {decode_ms:.1f} ms of one core "
                f"({1e3 / decode_ms:.0f} groups/s for the trainer's rank 0 to decode)",
                flush=True,
            )
            for count_workers in workers:
                run_point(args, url, count, count_workers, len(payload))


@contextmanager
def _given(url: str):
    yield url


if __name__ == "__main__":
    main()
