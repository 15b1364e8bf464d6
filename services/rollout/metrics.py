"""Prometheus metrics of a rollout worker (`agentrl_rollout_*`, see agentrl.common.metrics).

- `episodes_in_flight_episodes` (gauge): episodes started and not yet finished.
- `generated_tokens_total` (counter): model-sampled tokens; its rate is the generated tokens/s.
- `episodes_total` by finish reason; `episode_turns_turns` and `episode_tool_calls_calls`
  (histograms): turns and tool calls per episode.
- `tool_latency_seconds` by tool (histogram) and `tool_errors_total` by tool and status: every
  call whose status is not OK (tool errors, timeouts, parse errors, unreachable services).
- `groups_published_total`, `tasks_rejected_total` (malformed tasks, acked and dropped),
  `task_failures_total` (a sample or its scoring raised; the task is retried).
- `queue_lag_seconds` (histogram): from a task's `created_at_unix_s` (the trainer admitted it)
  to this worker taking it from the prompts stream.
- `prompts_undelivered_tasks` and `prompts_pending_tasks` (gauges, refreshed every
  STREAM_STATS_INTERVAL_S by the worker): tasks in the prompts stream not yet read by any
  worker, and read but not yet completed. They describe the whole stream, so every worker
  reports the same figure: aggregate with max(), not sum().
- `published_policy_version` (gauge): the run's latest published policy version as this worker
  follows it (agentrl.common.policy_version).
- `policy_version_lag_versions` (histogram): per finished episode, the published version minus
  the oldest version among its sampled tokens (`policy_version_lag`; the trainer's staleness of
  the sample if it were consumed now).

`RolloutMetrics.record_episode` also keeps plain totals for `GetStatus` and the logs.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from agentrl.common import metrics
from agentrl.proto.core.v1 import trajectory_pb2

SERVICE = "rollout"
# Per-episode counts: single-turn answers up to the longest agentic episodes of the recipes.
COUNT_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Queue lag: an idle pool picks tasks up within a second; a backlog under the staleness bound
# holds them for up to several training steps (minutes).
QUEUE_LAG_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Version lag: 0 on-policy, up to `trainer.max_staleness` (4 by default) and beyond when broken.
VERSION_LAG_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 32)
# How often the worker reads the prompts stream's lag and pending count (three cheap Redis
# calls): a few times per Prometheus scrape interval (15-30 s).
STREAM_STATS_INTERVAL_S = 5.0


def policy_version_lag(
    traj: trajectory_pb2.Trajectory, latest_version: int, admitted_version: int
) -> int:
    """`latest_version` minus the oldest version among the sampled tokens (the task's admitted
    version when none was sampled), as the trainer counts staleness; never below 0 (tokens of a
    version whose event has not arrived yet)."""
    sampled = [v for v, m in zip(traj.policy_versions, traj.loss_mask) if m and v >= 0]
    oldest = min(sampled) if sampled else admitted_version
    return max(latest_version - oldest, 0)


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.in_flight = metrics.gauge(
            SERVICE,
            "episodes_in_flight",
            "episodes",
            "Episodes started and not finished",
            registry=registry,
        )
        self.tokens = metrics.counter(
            SERVICE,
            "generated_tokens",
            "total",
            "Model-sampled tokens (rate = generated tokens/s)",
            registry=registry,
        )
        self.episodes = metrics.counter(
            SERVICE,
            "episodes",
            "total",
            "Finished episodes by finish reason",
            ["finish_reason"],
            registry=registry,
        )
        self.turns = metrics.histogram(
            SERVICE,
            "episode_turns",
            "turns",
            "Turns per episode",
            registry=registry,
            buckets=COUNT_BUCKETS,
        )
        self.tool_calls = metrics.histogram(
            SERVICE,
            "episode_tool_calls",
            "calls",
            "Tool calls per episode",
            registry=registry,
            buckets=COUNT_BUCKETS,
        )
        self.tool_latency = metrics.histogram(
            SERVICE,
            "tool_latency",
            "seconds",
            "Wall time of one tool call",
            ["tool"],
            registry=registry,
        )
        self.tool_errors = metrics.counter(
            SERVICE,
            "tool_errors",
            "total",
            "Tool calls that did not succeed",
            ["tool", "status"],
            registry=registry,
        )
        self.groups = metrics.counter(
            SERVICE,
            "groups_published",
            "total",
            "Groups published to the groups stream",
            registry=registry,
        )
        self.rejected = metrics.counter(
            SERVICE,
            "tasks_rejected",
            "total",
            "Malformed tasks acked without a group",
            registry=registry,
        )
        self.failures = metrics.counter(
            SERVICE,
            "task_failures",
            "total",
            "Group attempts that raised (retried)",
            registry=registry,
        )
        self.queue_lag = metrics.histogram(
            SERVICE,
            "queue_lag",
            "seconds",
            "From a task's admission to a worker taking it",
            registry=registry,
            buckets=QUEUE_LAG_BUCKETS_S,
        )
        self.prompts_undelivered = metrics.gauge(
            SERVICE,
            "prompts_undelivered",
            "tasks",
            "Prompts-stream tasks no worker has read yet",
            registry=registry,
        )
        self.prompts_pending = metrics.gauge(
            SERVICE,
            "prompts_pending",
            "tasks",
            "Prompts-stream tasks read and not completed",
            registry=registry,
        )
        self.published_version = metrics.gauge(
            SERVICE,
            "published_policy",
            "version",
            "The run's latest published policy version",
            registry=registry,
        )
        self.version_lag = metrics.histogram(
            SERVICE,
            "policy_version_lag",
            "versions",
            "Published version minus an episode's oldest token version",
            registry=registry,
            buckets=VERSION_LAG_BUCKETS,
        )
        self._lock = threading.Lock()
        self.started_s = time.monotonic()
        self.episodes_done = 0
        self.tokens_done = 0
        self.policy_version = 0
        self.in_flight_local = 0  # this worker's share of the (process-wide) gauge

    def start_episodes(self, n: int) -> None:
        with self._lock:
            self.in_flight_local += n
        self.in_flight.inc(n)

    def finish_episodes(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self.in_flight_local -= n
        self.in_flight.dec(n)

    def record_pickup(self, created_at_unix_s: float) -> None:
        """A task taken from the prompts stream; tasks without a creation time are skipped."""
        if created_at_unix_s > 0:
            self.queue_lag.observe(max(time.time() - created_at_unix_s, 0.0))

    def record_stream(self, undelivered: int | None, pending: int) -> None:
        if undelivered is not None:  # Redis < 7 cannot tell
            self.prompts_undelivered.set(undelivered)
        self.prompts_pending.set(pending)

    def record_episode(
        self, traj: trajectory_pb2.Trajectory, *, latest_version: int, admitted_version: int
    ) -> None:
        """One finished episode; `latest_version`: the run's published policy version now."""
        self.version_lag.observe(policy_version_lag(traj, latest_version, admitted_version))
        generated = sum(traj.loss_mask)
        self.tokens.inc(generated)
        self.episodes.labels(trajectory_pb2.FinishReason.Name(traj.finish_reason)).inc()
        self.turns.observe(len(traj.turns))
        self.tool_calls.observe(traj.num_tool_calls)
        for turn in traj.turns:
            call = turn.tool_call
            if (
                not turn.HasField("tool_call")
                or call.status == trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED
            ):
                continue  # no call, or one refused by the tool-call limit (never ran)
            self.tool_latency.labels(call.tool).observe(call.latency_s)
            if call.status != trajectory_pb2.TOOL_CALL_STATUS_OK:
                self.tool_errors.labels(
                    call.tool, trajectory_pb2.ToolCallStatus.Name(call.status)
                ).inc()
        with self._lock:
            self.episodes_done += 1
            self.tokens_done += generated
            self.policy_version = max([self.policy_version, *traj.policy_versions])

    def tokens_per_s(self) -> float:
        """Generated tokens/s since the worker started."""
        return self.tokens_done / max(time.monotonic() - self.started_s, 1e-9)
