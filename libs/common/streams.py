"""Redis stream queues: how services pass serialized protobuf messages to each other.

Every stream is `agentrl:{run_id}:{name}` (`stream_key`): `prompts` carries `RolloutTask`,
`groups` carries `Group`. An entry has two fields: `data` (the serialized message) and `key`
(its idempotency key). Consumers read through a consumer group, so each entry goes to one
consumer of the group and stays in the group's pending list until acked.

Delivery semantics: at-least-once delivery + idempotent completion = exactly-once effect.
- An entry is delivered again when its consumer dies before acking: after
  `visibility_timeout_ms` without renewal any consumer's `read()` reclaims it (XAUTOCLAIM).
  A live consumer renews its unacked entries on each `read()`; one that holds entries longer
  between reads (a rollout worker at its concurrency cap, a trainer between checkpoints) calls
  `keep_alive()` from its loop or a timer thread. A restarted consumer with the same name gets
  its own pending entries back first.
- A producer whose XADD reply is lost retries, so one message may sit in the stream twice,
  under the same idempotency key.
- `complete(entry)` records the key in the group's done set, then acks: ZADD NX, XACK and
  EXPIRE written together, which Redis runs in that order (one round trip, no MULTI: it needs
  no atomicity). An acked entry always has its key recorded; a key recorded without the ack
  (the connection or the server died in between) leaves the entry pending, so it is delivered
  again and skipped by `is_done()`; a retry after a lost reply repeats all three, each
  idempotent. A consumer checks `is_done(entry)` before processing and only acks a done
  entry. So a message whose completion was recorded is never processed again, whichever copy
  or delivery arrives later. `read()` fetches the done flags of the entries it hands out in the
  same batch (one ZMSCORE for the batch), and the first `is_done()` of an entry within
  `DONE_PREFETCH_MAX_AGE_S` of its read answers from it, updated by this queue's own
  `complete()` calls since (a second copy in the same batch is done once the first is); a
  later call asks Redis again. A completion by another consumer between the read and the
  check is missed, the same race as one between the check and the processing.
- Round trips: `publish()` one (XADD with the approximate MAXLEN cap), `complete()` one (the
  three commands; every `DONE_PRUNE_INTERVAL_S` a fourth prunes the done set), `read()` two
  per batch (XREADGROUP, then the done flags), `trim()` one (a Lua script finds the bound and
  trims).
- Two gaps remain. (1) A consumer that dies after its effect but before `complete()` leaves
  the entry to be processed again: call `complete()` only once the effect is durable, and make
  the effect either vanish with the crash (the trainer acks a group only after the update that
  used it is checkpointed; a crash restores the earlier checkpoint) or be keyed by the
  idempotency key. (2) A consumer that is alive but renews nothing for a visibility timeout
  (slow work, or stuck retrying through a Redis outage) loses its entry to another consumer
  while still working on it: keep the timeout above the longest work between renewals plus the
  longest outage to ride through. Keys are remembered `done_ttl_s`, far past any redelivery:
  a key's score is the completing client's clock, and `complete()` removes the keys older than
  `done_ttl_s` by its own clock at most every `DONE_PRUNE_INTERVAL_S` (clocks a few seconds or
  minutes apart do not matter against a TTL of hours); every call renews the set's EXPIRE, so
  a set re-created by an empty restart expires too.
- Redis itself is a network boundary: every operation retries ConnectionError/TimeoutError
  with bounded exponential backoff until `retry_deadline_s`, then raises
  `StreamUnavailableError`. After a restart without persistence the consumer group is
  re-created (NOGROUP), and what the old server held is lost: durability across Redis restarts
  is the server's job (AOF with `appendfsync always`), not this module's.

Threads: `read()` belongs to one thread; the other methods may be called from any. Not
covered: Redis Cluster (`complete()` writes two keys without a hash tag on one connection)
and asyncio (services call these methods from a worker thread, e.g. `asyncio.to_thread`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from google.protobuf.message import Message
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from agentrl.common import retry
from agentrl.common.retry import BACKOFF_MAX_S

KEY_PREFIX = "agentrl"
DATA_FIELD = b"data"
KEY_FIELD = b"key"
# A consumer that has not touched an entry for 60 s is presumed dead: a rollout episode renews
# its entries on every read() long before that, and a dead worker's tasks wait at most a minute.
VISIBILITY_TIMEOUT_MS = 60_000
# How often read() renews its own entries and reclaims dead consumers' ones: a quarter of the
# visibility timeout, so a live consumer renews several times before others may claim.
RECLAIM_INTERVAL_S = 15.0
# A completed key must outlive every redelivery of its entry (minutes at most); a day also covers
# a producer retrying after a long outage, while the done set stays bounded for long runs.
DONE_TTL_S = 24 * 3600
# Kubernetes restarts a Redis pod in well under 30 s; past that, an operator must look.
RETRY_DEADLINE_S = 30.0
# Socket reads give up after 10 s so a silently dead server is noticed; blocking reads stay below.
SOCKET_TIMEOUT_S = 10.0
# complete() prunes the done set at most this often: a prune that removes nothing still costs
# Redis a sorted-set lookup on every call, and pruning a minute late keeps a minute of keys more
# than the day the set holds anyway.
DONE_PRUNE_INTERVAL_S = 60.0
# A done flag fetched with its entry answers the first is_done() within this time: consumers
# check right after read(); a check later than that (work queued behind a cap) asks Redis again.
DONE_PREFETCH_MAX_AGE_S = 1.0

M = TypeVar("M", bound=Message)
T = TypeVar("T")

# KEYS: stream. ARGV: group, consumer, entry ids. Resets the idle time of the entries this
# consumer still owns (XCLAIM JUSTID does not count a delivery) and returns their ids.
_KEEP_ALIVE_LUA = """
local kept = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""

# KEYS: stream. ARGV: approximate ("1" or "0"). The bound of every group is its lowest pending
# id or, with nothing pending, the id after its last delivered one (both only move forward);
# entries below the lowest bound are deleted. Returns how many were.
_TRIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local best_ms, best_seq = nil, nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local summary = redis.call('XPENDING', KEYS[1], info['name'])
  local id, bump = info['last-delivered-id'], 1
  if summary[1] > 0 then id, bump = summary[2], 0 end
  local dash = string.find(id, '-', 1, true)
  local ms, seq = tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1)) + bump
  if best_ms == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq = ms, seq
  end
end
local bound = string.format('%.0f-%.0f', best_ms, best_seq)
if ARGV[1] == '1' then return redis.call('XTRIM', KEYS[1], 'MINID', '~', bound) end
return redis.call('XTRIM', KEYS[1], 'MINID', bound)
"""


def stream_key(run_id: str, name: str) -> str:
    """The Redis key of a run's stream, e.g. `stream_key("r1", "groups")` -> `agentrl:r1:groups`."""
    if not run_id or not name:
        raise ValueError(f"run_id and name must be non-empty, got {run_id!r} and {name!r}")
    return f"{KEY_PREFIX}:{run_id}:{name}"


class StreamUnavailableError(ConnectionError):
    """Redis could not be reached within the retry deadline."""


@dataclass(frozen=True)
class StreamEntry:
    id: str
    key: str  # idempotency key
    payload: bytes
    delivery_count: int  # 1 on first delivery, more when reclaimed from a dead consumer

    def decode(self, message_cls: type[M]) -> M:
        return message_cls.FromString(self.payload)


@dataclass(frozen=True)
class StreamStats:
    length: int  # entries in the stream, acked or not (trim() removes the acked ones)
    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    pending: int  # delivered, not yet acked
    pending_per_consumer: dict[str, int]
    last_delivered_id: str


def call_with_deadline(
    op: Callable[[], T],
    url: str,
    deadline_s: float = RETRY_DEADLINE_S,
    backoff_max_s: float = BACKOFF_MAX_S,
    started_s: float | None = None,
) -> T:
    """`op()`, retried on connection errors and timeouts with the shared policy of
    agentrl.common.retry (jittered exponential backoff) until `deadline_s` has passed, then
    `StreamUnavailableError` naming `url` and the fix. Every Redis client here uses it (streams,
    the policy version publisher). `started_s` (time.monotonic()): when the caller's own first
    try failed, the deadline counts from that try."""
    left_s = deadline_s if started_s is None else deadline_s - (time.monotonic() - started_s)

    def unavailable(err: BaseException) -> StreamUnavailableError:
        return StreamUnavailableError(
            f"Redis at {url} unreachable for {deadline_s:.0f} s "
            f"({type(err).__name__}: {err}); check that the server is running, that "
            "the URL (host, port, password, db) is right and the network allows it "
            "(redis.url; redis.reconnect_deadline_s sets how long to wait)"
        )

    return retry.call_with_deadline(
        op,
        retry.Outage("Redis", url, "redis.reconnect_deadline_s", left_s),
        retry_on=lambda err: isinstance(err, redis.ConnectionError | redis.TimeoutError),
        backoff_max_s=backoff_max_s,
        error=unavailable,
    )


class StreamQueue:
    """One stream seen by one consumer group; publish from anywhere, read as `consumer`."""

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        *,
        consumer: str | None = None,
        maxlen: int | None = None,
        visibility_timeout_ms: int = VISIBILITY_TIMEOUT_MS,
        reclaim_interval_s: float = RECLAIM_INTERVAL_S,
        done_ttl_s: int = DONE_TTL_S,
        retry_deadline_s: float = RETRY_DEADLINE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
    ) -> None:
        if maxlen is not None and maxlen <= 0:
            raise ValueError(f"maxlen must be positive or None (no cap), got {maxlen}")
        if visibility_timeout_ms <= 0 or done_ttl_s <= 0 or retry_deadline_s <= 0:
            raise ValueError("visibility_timeout_ms, done_ttl_s and retry_deadline_s must be > 0")
        self.url, self.stream, self.group = url, stream, group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.maxlen = maxlen
        self.visibility_timeout_ms = visibility_timeout_ms
        self.reclaim_interval_s = reclaim_interval_s
        self.done_ttl_s = done_ttl_s
        self.retry_deadline_s = retry_deadline_s
        self.backoff_max_s = backoff_max_s
        self.socket_timeout_s = socket_timeout_s
        self.done_key = f"{stream}:{group}:done"
        # Retries are ours (bounded by the deadline), not redis-py's.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 5.0),
            retry=Retry(NoBackoff(), 0),
        )
        # publish()'s and complete()'s constant arguments, encoded once: they run once per
        # message, and redis-py encodes a str or int argument with five type checks on every call.
        self._done_key_arg, self._stream_arg, self._group_arg, self._ttl_arg = (
            str(a).encode() for a in (self.done_key, stream, group, done_ttl_s)
        )
        self._next_prune_s = 0.0  # monotonic time of complete()'s next prune of the done set
        self._keep_alive = self.client.register_script(_KEEP_ALIVE_LUA)
        self._trim = self.client.register_script(_TRIM_LUA)
        self._in_flight: set[str] = set()  # ids handed out by read() and not yet acked
        # entry id -> (key, done flag, monotonic time it was read), for its first is_done()
        self._done_at_read: dict[str, tuple[str, bool, float]] = {}
        self._lock = threading.Lock()
        self._own_cursor: str | None = "0"  # read() first pages through this name's own PEL
        self._next_reclaim_s = 0.0
        self._claim_cursor = "0-0"

    # -- connection handling ------------------------------------------------------------------

    def _retry(self, op: Callable[[], T]) -> T:
        """`op()` through outages and a lost group. The first try runs bare: every operation
        takes this path, and the retry machinery (closures, the Outage) cost as much Python as
        a redis-py command. A failed first try is replayed as the first attempt of
        `_retry_failed`, so backoff, deadline and group re-creation are those of one loop."""
        started_s = time.monotonic()
        try:
            return op()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as err:
            first_error = err
        return self._retry_failed(op, first_error, started_s)

    def _retry_failed(self, op: Callable[[], T], first_error: Exception, started_s: float) -> T:
        need_group = [False]  # kept across reconnects: a restarted server lost the group
        replay = [first_error]

        def attempt() -> T:
            while True:
                try:
                    if replay:
                        raise replay.pop()
                    if need_group[0]:
                        self._create_group()
                    return op()
                except redis.ResponseError as err:
                    # NOGROUP: the server restarted empty. UNBLOCKED: the stream was deleted
                    # while this consumer was blocked reading it (a fresh run resetting its
                    # streams). Either way: re-create the group and go on.
                    if not str(err).startswith(("NOGROUP", "UNBLOCKED")) or need_group[0]:
                        raise
                    need_group[0] = True

        return call_with_deadline(
            attempt, self.url, self.retry_deadline_s, self.backoff_max_s, started_s
        )

    def _round_trip(self, commands: list[tuple]) -> list:
        """The replies to `commands`, written at once and read in order: one round trip, like a
        redis-py pipeline without MULTI, minus its per-call object, command stack and
        observability hooks (complete() of one entry: 145 against 205 us of client CPU through a
        pipeline; publish() of a 0.33 MB Group 244 against 263 us through `xadd`, on the 2-core
        dev machine). Redis runs the commands in order; an error reply raises once the replies
        before it are read."""
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            return [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # replies may be left unread: the connection must not be reused
            raise
        finally:
            pool.release(conn)

    def _eval(self, script: Script, *args: str | int | bytes) -> Any:
        """EVALSHA of a registered script (`args`: the number of keys, the keys, the script's
        arguments), loaded again on NOSCRIPT (a restarted server). What redis-py's Script call
        does, without its two imports and tuple copies per call."""
        try:
            return self.client.execute_command("EVALSHA", script.sha, *args)
        except NoScriptError:
            script.sha = self.client.script_load(script.script)
            return self.client.execute_command("EVALSHA", script.sha, *args)

    def _create_group(self) -> None:
        # Start at 0 so entries published before the first consumer came up are not skipped.
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if not str(err).startswith("BUSYGROUP"):
                raise

    def ensure_group(self) -> None:
        """Create the stream and consumer group if missing (idempotent)."""
        self._retry(self._create_group)

    # -- producing ----------------------------------------------------------------------------

    def publish(self, message: Message | bytes, idempotency_key: str | None = None) -> str:
        """Append one message; the key defaults to the message's own `idempotency_key` field."""
        if idempotency_key is None and isinstance(message, Message):
            idempotency_key = getattr(message, "idempotency_key", None)
        if not idempotency_key:
            raise ValueError("publish needs an idempotency key (argument or message field)")
        data = message if isinstance(message, bytes) else message.SerializeToString()
        cap = () if self.maxlen is None else (b"MAXLEN", b"~", self.maxlen)
        fields = (DATA_FIELD, data, KEY_FIELD, idempotency_key)
        command = (b"XADD", self._stream_arg, *cap, b"*", *fields)
        return self._retry(lambda: self._round_trip([command])[0]).decode()

    # -- consuming ----------------------------------------------------------------------------

    def read(self, count: int = 16, block_ms: int = 1000) -> list[StreamEntry]:
        """Up to `count` entries for this consumer: its own leftovers from a previous process with
        the same name first, then (every `reclaim_interval_s`) entries reclaimed from dead
        consumers, else new ones, waiting up to `block_ms` for them."""
        if block_ms >= self.socket_timeout_s * 1000:
            raise ValueError(f"block_ms={block_ms} must stay below socket_timeout_s * 1000")
        if self._own_cursor is not None:  # leftovers of a previous process with our name
            own, last_id = self._read_group(self._own_cursor, count, None)
            self._own_cursor = last_id
            if own:
                return self._with_delivery_counts(own)
        if time.monotonic() >= self._next_reclaim_s:
            self.keep_alive()
            reclaimed = self.reclaim(count)
            # Sweep a dead consumer's backlog on consecutive reads; pause once the scan wrapped.
            swept = len(reclaimed) < count and self._claim_cursor == "0-0"
            self._next_reclaim_s = time.monotonic() + (self.reclaim_interval_s if swept else 0)
            if reclaimed:
                return reclaimed
        return self._read_group(">", count, block_ms)[0]

    def _read_group(
        self, start: str, count: int, block_ms: int | None
    ) -> tuple[list[StreamEntry], str | None]:
        """Entries from XREADGROUP and the last id seen (None when there were none)."""
        reply = self._retry(
            lambda: self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block_ms
            )
        )
        raw = reply[0][1] if reply else []
        last_id = raw[-1][0].decode() if raw else None
        return self._track(raw), last_id

    def reclaim(self, count: int = 16, min_idle_ms: int | None = None) -> list[StreamEntry]:
        """Take over up to `count` entries idle for `min_idle_ms` (default: the visibility
        timeout) from any consumer of the group."""
        idle_ms = self.visibility_timeout_ms if min_idle_ms is None else min_idle_ms
        raw: list = []
        while not raw:  # XAUTOCLAIM scans 10 * count PEL entries per call; go on until a wrap
            cursor, raw, _deleted = self._retry(
                lambda: self.client.xautoclaim(
                    self.stream, self.group, self.consumer, idle_ms, self._claim_cursor, count=count
                )
            )
            self._claim_cursor = cursor.decode()
            if self._claim_cursor == "0-0":
                break
        with self._lock:  # our own live entries, renewed by the claim, are not handed out twice
            raw = [(i, f) for i, f in raw if i.decode() not in self._in_flight]
        return self._with_delivery_counts(self._track(raw))

    def _with_delivery_counts(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        def fetch() -> list:
            pipe = self.client.pipeline(transaction=False)
            for e in entries:
                pipe.xpending_range(self.stream, self.group, e.id, e.id, 1)
            return pipe.execute()

        counts = self._retry(fetch) if entries else []
        return [
            StreamEntry(e.id, e.key, e.payload, c[0]["times_delivered"] if c else e.delivery_count)
            for e, c in zip(entries, counts)
        ]

    def _track(self, raw: list[tuple[bytes, dict | None]]) -> list[StreamEntry]:
        entries, lost = [], []
        for entry_id, fields in raw:
            if not fields:  # the entry was removed (MAXLEN cap) while pending: nothing to process
                lost.append(entry_id)
                continue
            key = fields.get(KEY_FIELD, b"").decode()
            entries.append(StreamEntry(entry_id.decode(), key, fields[DATA_FIELD], 1))
        keys = [e.key for e in entries]

        def fetch() -> list:
            if not lost:  # the usual case: one plain command, no pipeline to build
                return [self.client.zmscore(self.done_key, keys)]
            # The lost entries' ack and the done flags of the others share one round trip.
            pipe = self.client.pipeline(transaction=False)
            if lost:
                pipe.xack(self.stream, self.group, *lost)
            if keys:
                pipe.zmscore(self.done_key, keys)
            return pipe.execute()

        replies = self._retry(fetch) if raw else []
        flags = replies[-1] if keys else []
        now = time.monotonic()
        with self._lock:
            self._in_flight.update(e.id for e in entries)
            if len(self._done_at_read) > 4 * len(self._in_flight) + 1024:  # never asked: drop
                self._done_at_read = {
                    i: v for i, v in self._done_at_read.items() if i in self._in_flight
                }
            for entry, score in zip(entries, flags):
                self._done_at_read[entry.id] = (entry.key, score is not None, now)
        return entries

    def keep_alive(self, entries: Iterable[StreamEntry] | None = None) -> list[str]:
        """Renew this consumer's claim on `entries` (default: all it holds) so no other consumer
        reclaims them; returns the ids still owned (the others were reclaimed meanwhile)."""
        with self._lock:
            ids = [e.id for e in entries] if entries is not None else sorted(self._in_flight)
        if not ids:
            return []
        kept = self._retry(
            lambda: self._eval(self._keep_alive, 1, self.stream, self.group, self.consumer, *ids)
        )
        return [i.decode() for i in kept]

    def is_done(self, entry: StreamEntry) -> bool:
        """Whether some consumer of the group already completed this entry's idempotency key."""
        with self._lock:
            prefetched = self._done_at_read.pop(entry.id, None)
        if prefetched is not None and time.monotonic() - prefetched[2] < DONE_PREFETCH_MAX_AGE_S:
            return prefetched[1]
        return self._retry(lambda: self.client.zscore(self.done_key, entry.key)) is not None

    def ack(self, entries: StreamEntry | Iterable[StreamEntry]) -> int:
        """Ack without recording the key as done (for entries found `is_done`)."""
        ids = self._forget(entries)
        return self._retry(lambda: self.client.xack(self.stream, self.group, *ids)) if ids else 0

    def complete(self, entries: StreamEntry | Iterable[StreamEntry]) -> int:
        """Record the entries' keys as done, then ack them (one round trip); returns how many keys
        were new (fewer: another copy or delivery was completed first). Safe to repeat."""
        batch = [entries] if isinstance(entries, StreamEntry) else list(entries)
        if not batch:
            return 0
        keys = {e.key for e in batch}
        with self._lock:
            self._forget_locked(e.id for e in batch)
            # Copies of these keys read earlier (a duplicate in the same batch) are done now.
            for entry_id, (key, _done, read_s) in self._done_at_read.items():
                if key in keys:
                    self._done_at_read[entry_id] = (key, True, read_s)
        now_s = int(time.time())
        zadd = [b"ZADD", self._done_key_arg, b"NX"]
        for key in keys:
            zadd += (now_s, key)
        # In this order: a key recorded and not acked is redelivered and skipped; the reverse
        # would lose the record of an acked entry.
        commands = [
            zadd,
            (b"XACK", self._stream_arg, self._group_arg, *(e.id for e in batch)),
            (b"EXPIRE", self._done_key_arg, self._ttl_arg),
        ]
        if time.monotonic() >= self._next_prune_s:
            self._next_prune_s = time.monotonic() + DONE_PRUNE_INTERVAL_S
            commands.append(
                (b"ZREMRANGEBYSCORE", self._done_key_arg, b"-inf", now_s - self.done_ttl_s)
            )
        return self._retry(lambda: self._round_trip(commands)[0])

    def release(self, entries: StreamEntry | Iterable[StreamEntry]) -> None:
        """Give entries back without acking: this consumer stops renewing them, so once the
        visibility timeout passes any consumer's `read()` reclaims them (this one's too)."""
        self._forget(entries)

    def _forget(self, entries: StreamEntry | Iterable[StreamEntry]) -> list[str]:
        ids = [entries.id] if isinstance(entries, StreamEntry) else [e.id for e in entries]
        with self._lock:
            self._forget_locked(ids)
        return ids

    def _forget_locked(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._in_flight.discard(i)
            self._done_at_read.pop(i, None)

    # -- housekeeping -------------------------------------------------------------------------

    def trim(self, approximate: bool = False) -> int:
        """Delete entries every consumer group has acked; returns how many were deleted.

        The bound per group is its lowest pending id, or (nothing pending) the id after its last
        delivered one; one Lua script reads the bounds and trims (one round trip). With
        `approximate`, Redis deletes only whole internal nodes below the bound (XTRIM MINID ~):
        cheap enough to call after every batch, at the price of a few acked entries kept."""
        return self._retry(
            lambda: self._eval(self._trim, 1, self.stream, "1" if approximate else "0")
        )

    def stats(self) -> StreamStats:
        def op() -> StreamStats:
            length = self.client.xlen(self.stream)
            try:
                groups = self.client.xinfo_groups(self.stream)
                consumers = self.client.xinfo_consumers(self.stream, self.group)
            except redis.ResponseError:  # stream or group missing: nothing delivered yet
                return StreamStats(length, length, 0, {}, "0-0")
            g = next(g for g in groups if g["name"].decode() == self.group)
            per_consumer = {c["name"].decode(): c["pending"] for c in consumers}
            last = g["last-delivered-id"].decode()
            return StreamStats(length, g.get("lag"), g["pending"], per_consumer, last)

        return self._retry(op)

    def delete(self) -> None:
        """Remove the stream, every group on it and this group's done set (scratch streams)."""
        self._retry(lambda: self.client.delete(self.stream, self.done_key))

    def close(self) -> None:
        self.client.close()
