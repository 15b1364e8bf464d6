"""Throughput of realistic `Group` messages through `StreamQueue` against a bare redis-py loop.

Each message is a `group_pb2.Group` of 16 scored trajectories x 2,048 tokens (token ids,
behaviour log-probs, loss mask and policy versions filled), about what a rollout worker pushes
per prompt. Both paths run in batches of `--batch` messages: publish them, read them through a
consumer group, ack them (the queue: `is_done` + `complete`, i.e. done-set check, then
done-mark and ack in one round trip), then trim exactly what was acked, so the stream stays
small. Acks go per message (one `complete` per entry against one XACK each) and per batch
(one `complete` of the batch, as the trainer completes a step's groups, against one XACK of the
batch's ids): two ratio lines. Same Redis, same process; `--rounds` paired rounds in rotating order
(benchmarks/paired.py), each path on a fresh stream per round; prints messages/s and client
CPU per message per round, and the ratios queue / bare as min / median / max over the rounds
(CPU moves less than wall time on a shared machine).

The bare loop does less than the queue must, so the ratio prices the guarantees too: it
checks no done set (the queue: one ZMSCORE per read batch), records no key (the queue's
`complete` is ZADD NX + XACK + EXPIRE in one round trip, against a bare XACK: about 9 us more
Redis time a call), trims at an id it already knows (the queue's `trim` finds the bound over
every group, one script), and sets no socket timeout (the queue's reads give up after 10 s).

    python benchmarks/bench_streams.py --rounds 3 --num-messages 400 --redis-url redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from dataclasses import dataclass

import redis
from paired import paired_rounds, ratio_line

from agentrl.common.streams import StreamQueue, stream_key
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2

NUM_SAMPLES = 16  # group size of a typical GRPO recipe
NUM_TOKENS = 2048  # prompt + response tokens per trajectory
VOCAB_SIZE = 151_936  # Qwen2.5/3 vocabulary: token ids take 3 varint bytes, as in real runs
MAX_RUNTIME_S_PER_PATH = 20.0  # a round of one path stops here even on a slow machine


class RoundTrips:
    """Counts Redis round trips of this process: every write of packed commands to a socket
    (a command, a pipeline's execute(), StreamQueue's own batched round trips alike; a
    connection's health check or handshake too). Deterministic, unlike the timings."""

    count = 0

    @classmethod
    def install(cls) -> None:
        send = redis.connection.AbstractConnection.send_packed_command

        def counted_send(self, *args, **kwargs):
            cls.count += 1
            return send(self, *args, **kwargs)

        redis.connection.AbstractConnection.send_packed_command = counted_send


@dataclass
class Timing:
    num_messages: int = 0
    publish_s: float = 0.0
    consume_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.publish_s + self.consume_s


def make_group(rng: random.Random, index: int) -> group_pb2.Group:
    key = f"task-{index}"
    samples = []
    for sample_index in range(NUM_SAMPLES):
        prompt_length = 256
        trajectory = trajectory_pb2.Trajectory(
            trajectory_id=f"{key}-{sample_index}",
            task_id=key,
            sample_index=sample_index,
            prompt_length=prompt_length,
            token_ids=[rng.randrange(VOCAB_SIZE) for _ in range(NUM_TOKENS)],
            behaviour_logprobs=[
                0.0 if t < prompt_length else -rng.expovariate(2.0) for t in range(NUM_TOKENS)
            ],
            loss_mask=[int(t >= prompt_length) for t in range(NUM_TOKENS)],
            policy_versions=[-1 if t < prompt_length else 41 for t in range(NUM_TOKENS)],
        )
        result = group_pb2.RewardResult(reward=float(sample_index % 2))
        samples.append(group_pb2.ScoredTrajectory(trajectory=trajectory, result=result))
    task = task_pb2.RolloutTask(task_id=key, idempotency_key=key, num_samples=NUM_SAMPLES)
    return group_pb2.Group(group_id=key, idempotency_key=key, task=task, samples=samples)


def run_bare(
    url: str, stream: str, payloads: list[bytes], batch: int, deadline: float, per_batch: bool
) -> Timing:
    client = redis.Redis.from_url(url)
    client.xgroup_create(stream, "trainer", id="0", mkstream=True)
    timing = Timing()
    while timing.num_messages < len(payloads) and time.monotonic() < deadline:
        start = time.perf_counter()
        for i in range(timing.num_messages, min(timing.num_messages + batch, len(payloads))):
            client.xadd(stream, {b"data": payloads[i], b"key": f"task-{i}".encode()})
        mid = time.perf_counter()
        reply = client.xreadgroup("trainer", "c", {stream: ">"}, count=batch, block=1000)
        entries = reply[0][1]
        for entry_id, fields in entries:
            assert fields[b"data"]
            if not per_batch:
                client.xack(stream, "trainer", entry_id)
        if per_batch:
            client.xack(stream, "trainer", *(entry_id for entry_id, _ in entries))
        client.xtrim(stream, minid=entries[-1][0], approximate=False)
        timing.publish_s += mid - start
        timing.consume_s += time.perf_counter() - mid
        timing.num_messages += len(entries)
    client.delete(stream)
    client.close()
    return timing


def run_queue(
    url: str, stream: str, payloads: list[bytes], batch: int, deadline: float, per_batch: bool
) -> Timing:
    queue = StreamQueue(url, stream, "trainer")
    queue.ensure_group()
    timing = Timing()
    while timing.num_messages < len(payloads) and time.monotonic() < deadline:
        start = time.perf_counter()
        for i in range(timing.num_messages, min(timing.num_messages + batch, len(payloads))):
            queue.publish(payloads[i], f"task-{i}")
        mid = time.perf_counter()
        entries = queue.read(count=batch, block_ms=1000)
        fresh = []
        for entry in entries:
            if queue.is_done(entry):
                queue.ack(entry)
                continue
            assert entry.payload
            if per_batch:
                fresh.append(entry)
            else:
                queue.complete(entry)
        if fresh:
            queue.complete(fresh)
        queue.trim()
        timing.publish_s += mid - start
        timing.consume_s += time.perf_counter() - mid
        timing.num_messages += len(entries)
    queue.client.delete(stream, queue.done_key)
    queue.close()
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (alternating)")
    parser.add_argument("--num-messages", type=int, default=400, help="messages per path/round")
    parser.add_argument("--batch", type=int, default=16, help="messages per publish/read batch")
    parser.add_argument("--distinct", type=int, default=8, help="distinct Groups to cycle through")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    if min(args.rounds, args.num_messages, args.batch, args.distinct) <= 0:
        parser.error("--rounds, --num-messages, --batch and --distinct must be positive")

    rng = random.Random(0)
    groups = [make_group(rng, i).SerializeToString() for i in range(args.distinct)]
    payloads = [groups[i % len(groups)] for i in range(args.num_messages)]
    mean_bytes = sum(map(len, payloads)) / len(payloads)
    print(
        f"Group: {NUM_SAMPLES} x {NUM_TOKENS} tokens, {mean_bytes / 1e6:.3f} MB serialized; "
        f"{args.num_messages} messages per path and round, batches of {args.batch}"
    )
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    # Acked per message (the queue: one `complete` per entry) and per batch (one `complete` of
    # the batch, as the trainer completes a step's groups; bare: one XACK of the batch ids).
    runners = {
        "bare redis-py": (run_bare, False),
        "StreamQueue": (run_queue, False),
        "bare per batch": (run_bare, True),
        "Queue per batch": (run_queue, True),
    }
    trips: dict[str, float] = {}
    cpu_us: dict[str, list[float]] = {name: [] for name in runners}  # client CPU per message
    RoundTrips.install()

    def path(name: str):
        def one_round(r: int) -> float:
            stream = stream_key(run_id, f"{name.replace(' ', '-').lower()}-{r}")
            deadline = time.monotonic() + MAX_RUNTIME_S_PER_PATH
            before, cpu_before_s = RoundTrips.count, time.process_time()
            runner, per_batch = runners[name]
            t = runner(args.redis_url, stream, payloads, args.batch, deadline, per_batch)
            cpu_us[name].append((time.process_time() - cpu_before_s) / t.num_messages * 1e6)
            trips[name] = (RoundTrips.count - before) / t.num_messages
            return t.num_messages / t.total_s

        return one_round

    def show(r: int, name: str, rate: float) -> None:
        print(
            f"  round {r} {name:<15} {rate:>7.0f} msg/s {rate * mean_bytes / 1e6:>7.1f} MB/s "
            f"{trips[name]:.2f} round trips/msg {cpu_us[name][-1]:>5.0f} us CPU/msg"
        )

    rates = paired_rounds(args.rounds, {name: path(name) for name in runners}, show)
    for queue, bare, how in (
        ("StreamQueue", "bare redis-py", "acked per message"),
        ("Queue per batch", "bare per batch", "acked per batch"),
    ):
        print(
            ratio_line(f"StreamQueue / bare, {how} (msg/s)", rates[queue], rates[bare], ">= 0.95")
        )
        print(
            ratio_line(f"StreamQueue / bare, {how} (client CPU/msg)", cpu_us[queue], cpu_us[bare])
        )


if __name__ == "__main__":
    main()
