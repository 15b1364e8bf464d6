"""Throughput of realistic `Group` messages through `StreamQueue` against a bare redis-py loop.

Each message is a `group_pb2.Group` of 16 scored trajectories x 2,048 tokens (token ids,
behaviour log-probs, loss mask and policy versions filled), about what a rollout worker pushes
per prompt. Both paths run in rounds of `--batch` messages: publish them, read them through a
consumer group, ack each (the queue: `is_done` + `complete`, i.e. done-set check, atomic
done-mark and ack), then trim, so the stream stays small. Same Redis, same process, same run.

    python benchmarks/bench_streams.py --num-messages 1000 --redis-url redis://127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from dataclasses import dataclass

import redis

from agentrl.common.streams import StreamQueue, stream_key
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2

NUM_SAMPLES = 16  # group size of a typical GRPO recipe
NUM_TOKENS = 2048  # prompt + response tokens per trajectory
VOCAB_SIZE = 151_936  # Qwen2.5/3 vocabulary: token ids take 3 varint bytes, as in real runs
MAX_RUNTIME_S = 50.0  # both paths together stay under a minute even on a slow machine


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


def run_bare(url: str, stream: str, payloads: list[bytes], batch: int, deadline: float) -> Timing:
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
            client.xack(stream, "trainer", entry_id)
        client.xtrim(stream, minid=entries[-1][0], approximate=False)
        timing.publish_s += mid - start
        timing.consume_s += time.perf_counter() - mid
        timing.num_messages += len(entries)
    client.delete(stream)
    client.close()
    return timing


def run_queue(url: str, stream: str, payloads: list[bytes], batch: int, deadline: float) -> Timing:
    queue = StreamQueue(url, stream, "trainer")
    queue.ensure_group()
    timing = Timing()
    while timing.num_messages < len(payloads) and time.monotonic() < deadline:
        start = time.perf_counter()
        for i in range(timing.num_messages, min(timing.num_messages + batch, len(payloads))):
            queue.publish(payloads[i], f"task-{i}")
        mid = time.perf_counter()
        entries = queue.read(count=batch, block_ms=1000)
        for entry in entries:
            if queue.is_done(entry):
                queue.ack(entry)
                continue
            assert entry.payload
            queue.complete(entry)
        queue.trim()
        timing.publish_s += mid - start
        timing.consume_s += time.perf_counter() - mid
        timing.num_messages += len(entries)
    queue.client.delete(stream, queue.done_key)
    queue.close()
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-messages", type=int, default=1000, help="Group messages per path")
    parser.add_argument("--batch", type=int, default=16, help="messages per publish/read round")
    parser.add_argument("--distinct", type=int, default=8, help="distinct Groups to cycle through")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    if args.num_messages <= 0 or args.batch <= 0 or args.distinct <= 0:
        parser.error("--num-messages, --batch and --distinct must be positive")

    rng = random.Random(0)
    groups = [make_group(rng, i).SerializeToString() for i in range(args.distinct)]
    payloads = [groups[i % len(groups)] for i in range(args.num_messages)]
    mean_bytes = sum(map(len, payloads)) / len(payloads)
    print(
        f"Group: {NUM_SAMPLES} x {NUM_TOKENS} tokens, {mean_bytes / 1e6:.3f} MB serialized; "
        f"{args.num_messages} messages per path, rounds of {args.batch}"
    )

    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    # Half the time budget each, so a slow machine still finishes both paths.
    budget_s = MAX_RUNTIME_S / 2
    results = {
        "bare redis-py": run_bare(
            args.redis_url,
            stream_key(run_id, "bare"),
            payloads,
            args.batch,
            time.monotonic() + budget_s,
        ),
        "StreamQueue": run_queue(
            args.redis_url,
            stream_key(run_id, "groups"),
            payloads,
            args.batch,
            time.monotonic() + budget_s,
        ),
    }

    header = (
        f"{'path':<14} {'messages':>8} {'publish/s':>10} {'consume/s':>10} {'msg/s':>8} {'MB/s':>8}"
    )
    print(header)
    print("-" * len(header))
    rates = {}
    for name, t in results.items():
        rates[name] = t.num_messages / t.total_s
        print(
            f"{name:<14} {t.num_messages:>8} {t.num_messages / t.publish_s:>10.0f} "
            f"{t.num_messages / t.consume_s:>10.0f} {rates[name]:>8.0f} "
            f"{rates[name] * mean_bytes / 1e6:>8.1f}"
        )
    ratio = rates["StreamQueue"] / rates["bare redis-py"]
    print(f"StreamQueue / bare: {ratio:.2f} (end-to-end messages/s)")


if __name__ == "__main__":
    main()
