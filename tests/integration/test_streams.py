"""Redis stream queue against real Redis: redelivery, exactly-once completion, restarts, trimming."""

from __future__ import annotations

import collections
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from agentrl.common.streams import DONE_TTL_S, StreamQueue, StreamUnavailableError, stream_key
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2

REDIS_URL = "redis://127.0.0.1:6379"


@pytest.fixture
def queues():
    """Builds queues and closes them after the test."""
    made: list[StreamQueue] = []

    def make(url: str, stream: str, group: str = "trainer", **kwargs) -> StreamQueue:
        queue = StreamQueue(url, stream, group, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own, which it can kill and restart on the same port."""

    def __init__(self, workdir: Path, persistent: bool) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.proc = subprocess.Popen(
            [*cmd, *durability, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # no shutdown save: only what was fsynced survives
        self.proc.wait()


@pytest.fixture
def private_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    servers: list[PrivateRedis] = []

    def make(persistent: bool) -> PrivateRedis:
        server = PrivateRedis(tmp_path, persistent)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def _consume_until(
    queue: StreamQueue, processed: collections.Counter, stop: threading.Event, work_s: float
) -> None:
    """A well-behaved consumer: skip done keys, process, then complete."""
    while not stop.is_set():
        for entry in queue.read(count=20, block_ms=50):
            if queue.is_done(entry):
                queue.ack(entry)
                continue
            time.sleep(work_s)
            processed[entry.key] += 1
            queue.complete(entry)


@pytest.mark.slow
def test_killed_consumers_entries_are_reclaimed_and_processed_exactly_once(run_id, queues):
    num_entries, batch_size = 10_000, 50
    rng = random.Random(1234)
    stream = stream_key(run_id, "prompts")
    options = {"visibility_timeout_ms": 40, "reclaim_interval_s": 0.0}
    producer = queues(REDIS_URL, stream, "rollout")
    keys = [f"task-{i}" for i in range(num_entries)]
    for key in keys:
        producer.publish(key.encode(), key)

    consumers = [queues(REDIS_URL, stream, "rollout", **options) for _ in range(4)]
    processed: collections.Counter = collections.Counter()
    num_kills = num_duplicates = num_skipped = num_reclaimed = 0
    deadline = time.monotonic() + 60
    while len(processed) < num_entries or producer.stats().pending or producer.stats().lag:
        assert time.monotonic() < deadline, f"stuck: {len(processed)} of {num_entries} processed"
        slot = rng.randrange(len(consumers))
        consumer = consumers[slot]
        batch = consumer.read(count=batch_size, block_ms=20)
        # A consumer dies after reading this batch: it abandons everything from `die_at` on.
        die_at = rng.randrange(len(batch) + 1) if batch and rng.random() < 0.2 else len(batch)
        for entry in batch[:die_at]:
            num_reclaimed += entry.delivery_count > 1
            if consumer.is_done(entry):
                num_skipped += 1
                consumer.ack(entry)
                continue
            processed[entry.key] += 1
            consumer.complete(entry)
        if die_at < len(batch):
            num_kills += 1
            consumer.close()
            consumers[slot] = queues(REDIS_URL, stream, "rollout", **options)
        if processed and rng.random() < 0.3:  # a producer retry: an already-completed key again
            producer.publish(b"again", rng.choice(sorted(processed)))
            num_duplicates += 1

    assert set(processed) == set(keys)
    assert max(processed.values()) == 1, "some key was processed twice"
    assert num_kills > 10 and num_reclaimed > 0  # the scenario really exercised redelivery
    assert num_skipped == num_duplicates
    stats = producer.stats()
    assert stats.pending == 0 and stats.lag == 0
    assert stats.length == num_entries + num_duplicates
    assert producer.trim() == stats.length and producer.stats().length == 0


def test_complete_is_idempotent_and_redelivered_copy_is_done(run_id, queues):
    queue = queues(REDIS_URL, stream_key(run_id, "groups"))
    queue.ensure_group()
    queue.publish(b"a", "key-1")
    queue.publish(b"a", "key-1")  # the same message twice, as after a lost XADD reply
    first, second = queue.read(count=10, block_ms=100)
    assert not queue.is_done(first)
    assert queue.complete(first) == 1
    assert queue.complete(first) == 0  # repeating a completion counts nothing
    assert queue.is_done(second)
    assert (
        queue.reclaim(min_idle_ms=0) == []
    )  # this consumer's own entries are not handed out again
    assert queue.complete([]) == 0
    assert queue.ack(second) == 1
    assert queue.stats().pending == 0


def test_done_keys_are_forgotten_after_done_ttl_and_the_done_set_expires(run_id, queues):
    stream = stream_key(run_id, "groups")
    queue = queues(REDIS_URL, stream, done_ttl_s=3600)
    queue.ensure_group()
    # Completed an hour and a minute ago, by a consumer gone since.
    queue.client.zadd(queue.done_key, {"old-key": time.time() - 3660})
    queue.publish(b"a", "old-key")
    queue.publish(b"b", "new-key")
    _old, new = queue.read(count=10, block_ms=100)
    assert queue.complete(new) == 1
    assert queue.client.zscore(queue.done_key, "old-key") is None  # pruned: past done_ttl_s
    assert queue.is_done(new)
    assert 3590 < queue.client.ttl(queue.done_key) <= 3600


def test_group_messages_round_trip_and_key_defaults_to_message_field(run_id, queues):
    queue = queues(REDIS_URL, stream_key(run_id, "groups"))
    queue.ensure_group()
    trajectory = trajectory_pb2.Trajectory(token_ids=[1, 2, 3], behaviour_logprobs=[0, -0.5, -1])
    group = group_pb2.Group(
        group_id="g1",
        idempotency_key="task-7",
        task=task_pb2.RolloutTask(task_id="t7", idempotency_key="task-7"),
        samples=[group_pb2.ScoredTrajectory(trajectory=trajectory)],
    )
    queue.publish(group)
    (entry,) = queue.read(count=10, block_ms=100)
    assert entry.key == "task-7" and entry.delivery_count == 1
    assert entry.decode(group_pb2.Group) == group
    with pytest.raises(ValueError, match="idempotency key"):
        queue.publish(b"raw bytes")
    with pytest.raises(ValueError, match="idempotency key"):
        queue.publish(group_pb2.Group(group_id="no-key"))


def test_live_consumer_keeps_its_entries_dead_one_loses_them(run_id, queues):
    stream = stream_key(run_id, "groups")
    options = {"visibility_timeout_ms": 500, "reclaim_interval_s": 0.0}
    alive = queues(REDIS_URL, stream, **options)
    other = queues(REDIS_URL, stream, **options)
    alive.ensure_group()
    for i in range(3):
        alive.publish(b"x", f"k{i}")
    held = alive.read(count=3, block_ms=100)
    assert len(held) == 3
    for _ in range(3):  # 900 ms in all, past the visibility timeout, renewed by read()
        time.sleep(0.3)
        assert alive.read(count=3, block_ms=1) == []
        assert other.read(count=3, block_ms=1) == []
    time.sleep(0.7)  # `alive` stops reading: presumed dead
    taken = other.read(count=3, block_ms=1)
    assert sorted(e.key for e in taken) == ["k0", "k1", "k2"]
    assert all(e.delivery_count == 2 for e in taken)
    assert alive.keep_alive(held) == []  # it learns they were reclaimed
    assert other.stats().pending_per_consumer == {alive.consumer: 0, other.consumer: 3}


def test_restarted_consumer_with_same_name_gets_its_pending_entries_first(run_id, queues):
    stream = stream_key(run_id, "groups")
    before = queues(REDIS_URL, stream, consumer="trainer-0")
    before.ensure_group()
    for i in range(5):
        before.publish(b"x", f"k{i}")
    assert [e.key for e in before.read(count=3, block_ms=100)] == ["k0", "k1", "k2"]
    before.close()
    after = queues(REDIS_URL, stream, consumer="trainer-0")  # long visibility timeout
    again = after.read(count=2, block_ms=100) + after.read(count=2, block_ms=100)
    assert [(e.key, e.delivery_count) for e in again] == [("k0", 2), ("k1", 2), ("k2", 2)]
    assert [e.key for e in after.read(count=10, block_ms=100)] == ["k3", "k4"]


def test_trim_removes_only_entries_acked_by_every_group_and_stats_are_exact(run_id, queues):
    stream = stream_key(run_id, "groups")
    trainer = queues(REDIS_URL, stream, "trainer")
    audit = queues(REDIS_URL, stream, "audit")
    trainer.ensure_group()
    audit.ensure_group()
    ids = [trainer.publish(b"x", f"k{i}") for i in range(10)]
    assert trainer.trim() == 0  # nothing delivered anywhere yet

    read = trainer.read(count=6, block_ms=100)
    stats = trainer.stats()
    assert (stats.length, stats.lag, stats.pending) == (10, 4, 6)
    assert stats.pending_per_consumer == {trainer.consumer: 6}
    assert stats.last_delivered_id == ids[5]
    trainer.complete([read[i] for i in (0, 1, 2, 4)])  # ids[3] and ids[5] stay pending
    audit.complete(audit.read(count=8, block_ms=100))
    assert trainer.stats().pending == 2

    assert trainer.trim() == 3  # below ids[3], the trainer's lowest pending entry
    assert [e[0].decode() for e in trainer.client.xrange(stream)] == ids[3:]
    assert trainer.trim() == 0
    stats = trainer.stats()
    assert (stats.length, stats.lag, stats.pending) == (7, 4, 2)

    trainer.complete([read[3], read[5]])
    assert trainer.trim() == 3  # now up to the trainer's last delivered entry
    assert [e.id for e in trainer.read(count=10, block_ms=100)] == ids[6:]
    assert audit.stats().lag == 2
    assert [e.id for e in audit.read(count=10, block_ms=100)] == ids[8:]


def test_approximate_trim_keeps_every_unacked_entry_and_exact_trim_finishes_the_job(run_id, queues):
    queue = queues(REDIS_URL, stream_key(run_id, "groups"))
    queue.ensure_group()
    ids = [queue.publish(b"x", f"k{i}") for i in range(250)]  # several internal stream nodes
    read = queue.read(count=250, block_ms=100)
    queue.complete(read[:220])
    cheap = queue.trim(approximate=True)  # whole nodes only: some acked entries may stay
    assert 0 <= cheap <= 220
    left = [e[0].decode() for e in queue.client.xrange(queue.stream)]
    assert left[-30:] == ids[220:] and len(left) == 250 - cheap
    assert queue.trim() == 220 - cheap
    assert [e[0].decode() for e in queue.client.xrange(queue.stream)] == ids[220:]


def test_unreachable_redis_raises_clear_error_within_deadline(queues):
    url = f"redis://127.0.0.1:{_free_port()}"
    queue = queues(url, "agentrl:none:groups", retry_deadline_s=0.5)
    start = time.monotonic()
    with pytest.raises(StreamUnavailableError, match=f"Redis at {url} unreachable") as info:
        queue.publish(b"x", "k")
    elapsed_s = time.monotonic() - start
    assert 0.5 <= elapsed_s < 2.0, f"gave up after {elapsed_s:.2f} s, deadline 0.5 s"
    assert "check that the server is running" in str(info.value)


def test_maxlen_caps_the_stream_and_publish_returns_the_entry_id(run_id, queues):
    queue = queues(REDIS_URL, stream_key(run_id, "groups"), maxlen=10)
    ids = [queue.publish(b"x", f"k{i}") for i in range(500)]
    # Approximate cap: Redis drops whole nodes (100 entries each by default), never the newest.
    assert 10 <= queue.client.xlen(queue.stream) < 200
    assert [e[0].decode() for e in queue.client.xrevrange(queue.stream, count=10)] == ids[::-1][:10]


def test_bad_arguments_are_rejected(queues):
    with pytest.raises(ValueError, match="non-empty"):
        stream_key("", "groups")
    assert stream_key("r1", "groups") == "agentrl:r1:groups"
    with pytest.raises(ValueError, match="maxlen"):
        queues(REDIS_URL, "agentrl:x:groups", maxlen=0)
    queue = queues(REDIS_URL, "agentrl:x:groups", socket_timeout_s=1.0)
    with pytest.raises(ValueError, match="block_ms"):
        queue.read(block_ms=5000)


@pytest.mark.slow
def test_redis_restart_with_aof_loses_no_published_entry(private_redis, queues):
    server = private_redis(persistent=True)
    stream = stream_key("restart", "prompts")
    # The visibility timeout outlasts the outage: a consumer stuck retrying complete() through
    # it must not have its entry reclaimed and processed a second time by the other one.
    options = {"visibility_timeout_ms": 1500, "reclaim_interval_s": 0.1, "retry_deadline_s": 20}
    producer = queues(server.url, stream, "rollout", **options)
    producer.ensure_group()
    published: list[str] = []
    processed: collections.Counter = collections.Counter()
    stop = threading.Event()

    def produce() -> None:
        for i in range(1500):
            key = f"task-{i}"
            producer.publish(key.encode(), key)
            published.append(key)  # only once Redis acknowledged the XADD

    consumers = [queues(server.url, stream, "rollout", **options) for _ in range(2)]
    threads = [threading.Thread(target=produce)] + [
        threading.Thread(target=_consume_until, args=(c, processed, stop, 0.002)) for c in consumers
    ]
    for thread in threads:
        thread.start()
    try:
        while len(published) < 500:
            time.sleep(0.01)
        server.kill()
        backlog = len(published) - len(processed)
        assert backlog > 100, "consumers kept up: the restart would test no stored entry"
        time.sleep(0.3)  # producers and consumers are now retrying
        server.start()
        threads[0].join(timeout=30)
        assert not threads[0].is_alive(), "producer did not recover"
        deadline = time.monotonic() + 20
        while set(processed) != set(published) or producer.stats().pending:
            assert time.monotonic() < deadline, f"{len(set(published) - set(processed))} lost"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads[1:]:
            thread.join(timeout=10)
    assert len(published) == 1500
    assert set(processed) == set(published)
    assert max(processed.values()) == 1, "some key was processed twice"


def test_redis_restart_empty_recreates_group_and_consumers_go_on(private_redis, queues):
    server = private_redis(persistent=False)
    stream = stream_key("empty-restart", "groups")
    consumer = queues(server.url, stream, visibility_timeout_ms=300, retry_deadline_s=10)
    producer = queues(server.url, stream, retry_deadline_s=10)
    consumer.ensure_group()
    for i in range(20):
        producer.publish(b"x", f"before-{i}")
    held = consumer.read(count=30, block_ms=100)
    assert len(held) == 20
    consumer.complete(held[:10])

    server.kill()
    server.start()  # empty: no stream, no group, no done set
    for i in range(20):  # published before any consumer re-created the group
        producer.publish(b"x", f"after-{i}")
    assert consumer.complete(held[10:]) == 10  # entries of the old server: nothing to ack
    # The done set the restart re-created expires like the first one, though this queue's next
    # prune is a minute away.
    assert 0 < consumer.client.ttl(consumer.done_key) <= DONE_TTL_S
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 20 and time.monotonic() < deadline:
        got += consumer.read(count=30, block_ms=100)
    assert [e.key for e in got] == [f"after-{i}" for i in range(20)]
    consumer.complete(got)
    stats = consumer.stats()
    assert (stats.pending, stats.lag, stats.length) == (0, 0, 20)


def test_reader_blocked_on_a_deleted_stream_goes_on_reading_the_new_one(run_id, queues):
    """A fresh training run deletes its streams while rollout workers sit in a blocking read:
    Redis unblocks them with an error; the reader re-creates its group and keeps reading."""
    key = stream_key(run_id, "prompts")
    reader = queues(REDIS_URL, key, "rollout", consumer="worker")
    reader.ensure_group()
    got: list = []
    errors: list[BaseException] = []

    def blocked_read() -> None:
        try:
            got.extend(reader.read(1, block_ms=5000))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(exc)

    thread = threading.Thread(target=blocked_read)
    thread.start()
    time.sleep(0.5)  # the read is blocked now
    owner = queues(REDIS_URL, key, "rollout")
    owner.delete()
    owner.ensure_group()
    owner.publish(b"task after the reset", idempotency_key="k1")
    thread.join(timeout=10)
    assert not thread.is_alive() and errors == []
    entries = got or reader.read(1, block_ms=2000)
    assert [e.payload for e in entries] == [b"task after the reset"]


def test_the_version_publisher_rides_through_a_redis_restart_and_names_a_dead_one(private_redis):
    """The trainer's PolicyVersionPublisher retries until redis.reconnect_deadline_s (it used
    redis-py's 3 retries, ~0.1 s: an outage during a weight sync killed the trainer)."""
    from agentrl.common.policy_version import PolicyVersionPublisher

    server = private_redis(persistent=True)
    publisher = PolicyVersionPublisher(server.url, "restart", retry_deadline_s=20)
    publisher.publish(1, "vllm://agentrl_gloo/v1", "sha256:0")
    server.kill()
    restarter = threading.Timer(1.0, server.start)  # back after a second, AOF intact
    restarter.start()
    try:
        publisher.publish(2, "vllm://agentrl_gloo/v2", "sha256:0")  # waits out the outage
    finally:
        restarter.join()
    assert publisher.latest() == 2
    publisher.close()
    server.kill()
    dead = PolicyVersionPublisher(server.url, "restart", retry_deadline_s=1.0)
    started = time.monotonic()
    with pytest.raises(StreamUnavailableError, match="redis.reconnect_deadline_s") as failure:
        dead.publish(3, "vllm://agentrl_gloo/v3", "sha256:0")
    assert server.url in str(failure.value) and time.monotonic() - started < 10
    dead.close()
