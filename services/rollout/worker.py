"""The rollout worker: RolloutTasks from Redis in, scored Groups out, many episodes at once.

    worker = RolloutWorker(config, sampler, pool)
    await worker.run()          # until request_stop(); other threads: pause/resume/status

Loop: read one task at a time from `agentrl:{run_id}:prompts` (consumer group `rollout`) while
fewer than `rollout.max_concurrent_episodes` episodes run, sample its group (`GroupSampler`,
asyncio), publish the Group to `agentrl:{run_id}:groups`, and only then `complete()` the task
entry (key recorded as done, entry acked, atomically).

Episode slots: a task starts once its n episodes fit under the cap (a task larger than the cap
runs alone) and gives each slot back as that episode ends, not when its whole group is
published: the next task starts while a group's slowest episodes (and the scoring) finish, so
the engine keeps a full batch instead of draining to a group's stragglers (docs/trainer.md,
"Async overlap"). At most `max_concurrent_episodes` episodes run at any time either way.

Delivery (agentrl.common.streams): a task whose key is already done is acked and skipped; a
second copy of a task running here waits for the first and is then skipped. While episodes run,
a timer renews this worker's entries every quarter visibility timeout, so only a dead worker's
tasks are reclaimed, by another worker's `read()`. A worker killed after publishing but before
completing leaves a second group with the same idempotency key: the trainer counts it once.

Failures: a malformed task is acked and counted (it can never succeed). Infrastructure failures
are not episodes: a group attempt that raises (vLLM, the reward service or the sandbox
unreachable past its `reconnect_deadline_s`, agentrl.common.retry) or that comes back with a
tool call the service could not run (`TOOL_CALL_STATUS_UNAVAILABLE`: sandbox or search down) is
never published; it is retried with backoff, at most `rollout.max_group_attempts` times, and
then released: left unacked and no longer renewed, so the task returns to the queue and any
worker (this one too) reclaims it after `redis.visibility_timeout_s`. Model errors (a bad tool
call, a program that raised, a wrong answer, a request vLLM rejected) stay episodes.

Policy versions: a `PolicyVersionSubscriber` follows the run's latest published version
(`latest_policy_version`, in GetStatus); each finished episode's lag behind it is a metric. The
worker does not pause the pool on a new version: the trainer's weight sync does (docs/rollout.md).

Shutdown (`request_stop`): no new task is read; tasks in flight get `rollout.shutdown_grace_s`
to finish and publish; the rest are cancelled and left unacked for another worker.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

from google.protobuf.message import DecodeError

from agentrl.common.agent.group import GroupSampler, check_task
from agentrl.common.config import AgentRLConfig
from agentrl.common.inference import control
from agentrl.common.inference.pool import InferencePool
from agentrl.common.logging import get_logger
from agentrl.common.policy_version import PolicyVersionSubscriber
from agentrl.common.run_layout import GROUPS_GROUP, PROMPTS_GROUP, RunLayout
from agentrl.common.streams import StreamEntry, StreamQueue
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.proto.rollout.v1 import rollout_pb2
from agentrl.rollout.metrics import STREAM_STATS_INTERVAL_S, RolloutMetrics

log = get_logger(__name__)

# How long one read waits for a task: bounds how late a stop request is noticed.
READ_BLOCK_MS = 500
# Renew held entries this many times per visibility timeout (as streams.RECLAIM_INTERVAL_S).
RENEWALS_PER_TIMEOUT = 4
# Backoff of a failed group attempt: first retry soon, then at most every 30 s.
RETRY_INITIAL_S, RETRY_MAX_S = 1.0, 30.0
UNAVAILABLE = trajectory_pb2.TOOL_CALL_STATUS_UNAVAILABLE


class InfrastructureFailure(RuntimeError):
    """A group that sampled through an outage (a tool service unreachable): not an episode."""


def infrastructure_failure(group: group_pb2.Group) -> str | None:
    """Why `group` may not be trained on (a tool call that never reached its service), or None.
    The other outages (vLLM, reward) raise instead of producing a group."""
    for scored in group.samples:
        for turn in scored.trajectory.turns:
            if turn.HasField("tool_call") and turn.tool_call.status == UNAVAILABLE:
                call = turn.tool_call
                return (
                    f"{call.tool} unavailable in {scored.trajectory.trajectory_id}: {call.output}"
                )
    return None


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RolloutWorker:
    def __init__(
        self,
        config: AgentRLConfig,
        sampler: GroupSampler,
        pool: InferencePool,
        *,
        metrics: RolloutMetrics,
        worker_id: str | None = None,
    ) -> None:
        self.config, self.sampler, self.pool, self.metrics = config, sampler, pool, metrics
        self.worker_id = worker_id or sampler.worker_id or default_worker_id()
        self.cap = config.rollout.max_concurrent_episodes
        self.grace_s = config.rollout.shutdown_grace_s
        self.max_attempts = config.rollout.max_group_attempts
        visibility_ms = int(config.redis.visibility_timeout_s * 1000)
        self.renew_interval_s = config.redis.visibility_timeout_s / RENEWALS_PER_TIMEOUT
        run_id = config.run.run_id
        layout = RunLayout(run_id)
        self.prompts = StreamQueue(
            config.redis.url,
            layout.prompts,
            PROMPTS_GROUP,
            consumer=self.worker_id,
            visibility_timeout_ms=visibility_ms,
            reclaim_interval_s=self.renew_interval_s,
            retry_deadline_s=config.redis.reconnect_deadline_s,
        )
        self.groups = StreamQueue(
            config.redis.url,
            layout.groups,
            GROUPS_GROUP,
            maxlen=config.redis.max_stream_length,
            retry_deadline_s=config.redis.reconnect_deadline_s,
        )
        self.versions = PolicyVersionSubscriber(
            config.redis.url, run_id, on_version=metrics.published_version.set
        )
        self.paused = False
        self.reserved = 0  # episode slots taken: episodes started and not ended
        self.active: dict[str, asyncio.Task] = {}  # idempotency key -> its task
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None  # set on every change a waiter may need
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="rollout-read")  # read() thread

    # ---- control, from any thread ---------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking tasks and drain (safe from signal handlers and other threads)."""
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self.loop.call_soon_threadsafe(self._wake)

    def pause(self, mode: str, timeout_s: float = 60.0) -> None:
        """Admit no new task and pause the vLLM pool (`keep`, `wait` or `abort`)."""
        self.paused = True
        self._call(control.pause(self.pool, mode), timeout_s)

    def resume(self, timeout_s: float = 60.0) -> None:
        self._call(control.resume(self.pool), timeout_s)
        self.paused = False
        self._call(self._notify(), timeout_s)

    def _call(self, coro, timeout_s: float) -> None:
        if self.loop is None:
            coro.close()
            raise RuntimeError("the worker is not running")
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    @property
    def latest_policy_version(self) -> int:
        """The run's latest published policy version (0 before the first)."""
        return self.versions.latest

    def status(self) -> rollout_pb2.RolloutStatus:
        servers = [
            rollout_pb2.InferenceServer(
                url=s.url,
                healthy=s.healthy,
                in_flight=s.in_flight,
                policy_version=self.metrics.policy_version,
            )
            for s in self.pool.servers.values()
        ]
        return rollout_pb2.RolloutStatus(
            worker_id=self.worker_id,
            episodes_in_flight=int(self.metrics.in_flight_local),
            episodes_done=self.metrics.episodes_done,
            policy_version=self.metrics.policy_version,
            paused=self.paused,
            servers=servers,
            latest_policy_version=self.latest_policy_version,
        )

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self, on_started=None) -> None:
        """Consume tasks until `request_stop()`, then drain; `on_started()` once reading."""
        self.loop = asyncio.get_running_loop()
        self._stop, self._changed = asyncio.Event(), asyncio.Event()
        await asyncio.to_thread(self.prompts.ensure_group)
        await asyncio.to_thread(self.versions.start)
        if on_started is not None:
            on_started()
        keeper = asyncio.create_task(self._keep_alive_loop())
        stats = asyncio.create_task(self._stream_stats_loop())
        log.info(
            "rollout worker started",
            extra={"worker_id": self.worker_id, "stream": self.prompts.stream},
        )
        try:
            while not self._stop.is_set():
                if not await self._wait_for(lambda: not self.paused and self.reserved < self.cap):
                    break
                entries = await self.loop.run_in_executor(
                    self._reader, self.prompts.read, 1, READ_BLOCK_MS
                )
                for entry in entries:
                    await self._admit(entry)
            await self._drain()
        finally:
            keeper.cancel()
            stats.cancel()
            await asyncio.to_thread(self.versions.stop)
            self._reader.shutdown(wait=False)
            log.info(
                "rollout worker stopped",
                extra={"worker_id": self.worker_id, "episodes_done": self.metrics.episodes_done},
            )

    async def _wait_for(self, predicate) -> bool:
        """Wait until `predicate()` holds; False when a stop was requested first."""
        while not (predicate() or self._stop.is_set()):
            self._changed.clear()  # every waiter woken by the last set() already returned
            await self._changed.wait()
        return not self._stop.is_set()

    def _wake(self) -> None:
        """Every `_wait_for` looks at its predicate again (on the loop's thread)."""
        self._changed.set()

    async def _notify(self) -> None:
        self._wake()

    def _fits(self, n: int) -> bool:
        """n more episodes fit under the cap (a task larger than the cap runs alone)."""
        return self.reserved == 0 or self.reserved + n <= self.cap

    def _release(self, count: int) -> None:
        """`count` episodes ended (or were cancelled): their slots go to the next task."""
        if count > 0:
            self.reserved -= count
            self.metrics.finish_episodes(count)
            self._wake()

    async def _admit(self, entry: StreamEntry) -> None:
        try:
            task = entry.decode(task_pb2.RolloutTask)
            check_task(task)
        except (DecodeError, ValueError) as exc:
            log.error(
                "malformed rollout task acked and dropped",
                extra={"entry": entry.id, "error": str(exc)},
            )
            self.metrics.rejected.inc()
            await asyncio.to_thread(self.prompts.complete, entry)
            return
        if await asyncio.to_thread(self.prompts.is_done, entry):
            await asyncio.to_thread(self.prompts.ack, entry)
            return
        self.metrics.record_pickup(task.created_at_unix_s)
        n = task.num_samples
        if not await self._wait_for(lambda: self._fits(n)):
            return  # stopping: the entry stays unacked for another worker
        self.reserved += n
        self.metrics.start_episodes(n)
        earlier = self.active.get(entry.key)
        handle = asyncio.create_task(self._handle(entry, task, earlier))
        self.active[entry.key] = handle

    async def _handle(
        self, entry: StreamEntry, task: task_pb2.RolloutTask, earlier: asyncio.Task | None
    ) -> None:
        n, left = task.num_samples, [task.num_samples]  # left: slots this task still holds

        def finished(traj: trajectory_pb2.Trajectory) -> None:
            if left[0] > 0:  # its slot goes to the next task now, before the group is scored
                left[0] -= 1
                self._release(1)
            self.metrics.record_episode(
                traj,
                latest_version=self.latest_policy_version,
                admitted_version=task.admitted_policy_version,
            )

        try:
            if earlier is not None:  # a second copy of a task running here: wait for the first
                await asyncio.wait([earlier])
                if await asyncio.to_thread(self.prompts.is_done, entry):
                    await asyncio.to_thread(self.prompts.ack, entry)
                    return
            backoff_s = RETRY_INITIAL_S
            for attempt in range(1, self.max_attempts + 1):
                try:
                    group = await self.sampler.sample(task, on_episode=finished)
                    cause = infrastructure_failure(group)
                    if cause is not None:
                        raise InfrastructureFailure(cause)
                    break
                except Exception as exc:  # noqa: BLE001 - retried; the entry stays ours
                    self.metrics.failures.inc()
                    self._release(left[0])  # the attempt's episodes were cancelled
                    left[0] = 0
                    if attempt == self.max_attempts:
                        # Back to the queue: unacked, no longer renewed, reclaimed later.
                        log.error(
                            "group failed %d times; task returned to the queue",
                            attempt,
                            extra={"task_id": task.task_id, "error": repr(exc)},
                        )
                        await asyncio.to_thread(self.prompts.release, entry)
                        return
                    log.warning(
                        "group attempt failed; retrying",
                        extra={"task_id": task.task_id, "attempt": attempt, "error": repr(exc)},
                    )
                    await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
                    backoff_s = min(backoff_s * 2, RETRY_MAX_S)
                    if not await self._wait_for(lambda: self._fits(n)):
                        return  # stopping: the entry stays unacked for another worker
                    self.reserved += n
                    left[0] = n
                    self.metrics.start_episodes(n)
            await asyncio.to_thread(self.groups.publish, group)
            await asyncio.to_thread(self.prompts.complete, entry)
            self.metrics.groups.inc()
        finally:
            self._release(left[0])  # a copy that waited, or episodes cancelled by a stop
            if self.active.get(entry.key) is asyncio.current_task():
                del self.active[entry.key]
            self._wake()

    async def _keep_alive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval_s)
            try:
                await asyncio.to_thread(self.prompts.keep_alive)
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                log.warning("keep-alive failed", extra={"error": repr(exc)})

    async def _stream_stats_loop(self) -> None:
        while True:
            try:
                stats = await asyncio.to_thread(self.prompts.stats)
                self.metrics.record_stream(stats.lag, stats.pending)
            except Exception as exc:  # noqa: BLE001 - the gauges stay stale; the next read tries
                log.warning("prompts stream stats failed", extra={"error": repr(exc)})
            await asyncio.sleep(STREAM_STATS_INTERVAL_S)

    async def _drain(self) -> None:
        running = [t for t in self.active.values() if not t.done()]
        if running:
            log.info(
                "draining tasks in flight", extra={"tasks": len(running), "grace_s": self.grace_s}
            )
            _done, pending = await asyncio.wait(running, timeout=self.grace_s)
            for t in pending:  # unfinished: cancelled, never acked; another worker reclaims
                t.cancel()
            if pending:
                await asyncio.wait(pending)
