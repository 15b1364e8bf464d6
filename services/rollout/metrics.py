"""Prometheus metrics of a rollout worker (`agentrl_rollout_*`, see agentrl.common.metrics).

- `episodes_in_flight_episodes` (gauge): episodes started and not yet finished.
- `generated_tokens_total` (counter): model-sampled tokens; its rate is the generated tokens/s.
- `episodes_total` by finish reason; `episode_turns_turns` and `episode_tool_calls_calls`
  (histograms): turns and tool calls per episode.
- `tool_latency_seconds` by tool (histogram) and `tool_errors_total` by tool and status: every
  call whose status is not OK (tool errors, timeouts, parse errors, unreachable services).
- `groups_published_total`, `tasks_rejected_total` (malformed tasks, acked and dropped),
  `task_failures_total` (a sample or its scoring raised; the task is retried).

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


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.in_flight = metrics.gauge(SERVICE, "episodes_in_flight", "episodes",
                                       "Episodes started and not finished", registry=registry)
        self.tokens = metrics.counter(SERVICE, "generated_tokens", "total",
                                      "Model-sampled tokens (rate = generated tokens/s)",
                                      registry=registry)
        self.episodes = metrics.counter(SERVICE, "episodes", "total",
                                        "Finished episodes by finish reason", ["finish_reason"],
                                        registry=registry)
        self.turns = metrics.histogram(SERVICE, "episode_turns", "turns", "Turns per episode",
                                       registry=registry, buckets=COUNT_BUCKETS)
        self.tool_calls = metrics.histogram(SERVICE, "episode_tool_calls", "calls",
                                            "Tool calls per episode", registry=registry,
                                            buckets=COUNT_BUCKETS)
        self.tool_latency = metrics.histogram(SERVICE, "tool_latency", "seconds",
                                              "Wall time of one tool call", ["tool"],
                                              registry=registry)
        self.tool_errors = metrics.counter(SERVICE, "tool_errors", "total",
                                           "Tool calls that did not succeed", ["tool", "status"],
                                           registry=registry)
        self.groups = metrics.counter(SERVICE, "groups_published", "total",
                                      "Groups published to the groups stream", registry=registry)
        self.rejected = metrics.counter(SERVICE, "tasks_rejected", "total",
                                        "Malformed tasks acked without a group", registry=registry)
        self.failures = metrics.counter(SERVICE, "task_failures", "total",
                                        "Group attempts that raised (retried)", registry=registry)
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

    def record_episode(self, traj: trajectory_pb2.Trajectory) -> None:
        generated = sum(traj.loss_mask)
        self.tokens.inc(generated)
        self.episodes.labels(trajectory_pb2.FinishReason.Name(traj.finish_reason)).inc()
        self.turns.observe(len(traj.turns))
        self.tool_calls.observe(traj.num_tool_calls)
        for turn in traj.turns:
            call = turn.tool_call
            if not turn.HasField("tool_call") or \
                    call.status == trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED:
                continue  # no call, or one refused by the tool-call limit (never ran)
            self.tool_latency.labels(call.tool).observe(call.latency_s)
            if call.status != trajectory_pb2.TOOL_CALL_STATUS_OK:
                self.tool_errors.labels(call.tool,
                                        trajectory_pb2.ToolCallStatus.Name(call.status)).inc()
        with self._lock:
            self.episodes_done += 1
            self.tokens_done += generated
            self.policy_version = max([self.policy_version, *traj.policy_versions])

    def tokens_per_s(self) -> float:
        """Generated tokens/s since the worker started."""
        return self.tokens_done / max(time.monotonic() - self.started_s, 1e-9)
