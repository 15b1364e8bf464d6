"""Evaluation metrics over scored groups: avg@k, pass@k, tool calls per solved problem, length.

    report = evaluate_groups(groups, k=4)       # groups: agentrl.core.v1.Group, k samples each
    report["overall"]["pass_at_k"], report["by_task_type"]["math"]["avg_at_k"]

A sample is *correct* when the reward service's verdict is VERDICT_CORRECT (partial credit and
shaped rewards do not count). Per prompt with n samples of which c are correct:

- avg@k: c / n, averaged over prompts (the mean correct rate; with k samples per prompt this is
  also the fraction of correct samples).
- pass@k: the unbiased estimator of the Codex paper (Chen et al. 2021),
  1 - C(n - c, k) / C(n, k), averaged over prompts; exactly 1 when n - c < k.
- tool_calls_per_solved: mean `num_tool_calls` over the correct samples (None when none is).
- mean_response_length_tokens: mean tokens after the prompt (model tokens and observations).
- num_tool_calls, num_tool_errors: all calls, and those whose status is not OK (a tool the
  evaluation could not reach shows up here, not as a silently low accuracy).

Metrics are computed per task type (the task's `task_type`) and overall. Pure functions: no
I/O, no services; `eval_job.run_eval` produces the groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from agentrl.common.agent.group import response_length_tokens
from agentrl.proto.core.v1 import group_pb2, trajectory_pb2

OVERALL = "overall"


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of one prompt: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    if num_samples <= 0:
        raise ValueError(f"pass@k needs at least one sample, got n={num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"correct count must be in [0, n={num_samples}], got c={num_correct}")
    if not 1 <= k <= num_samples:
        raise ValueError(
            f"k must be in [1, n={num_samples}], got k={k}: sample at least k responses per prompt"
        )
    if num_samples - num_correct < k:
        return 1.0  # every k-subset holds a correct sample
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def is_correct(sample: group_pb2.ScoredTrajectory) -> bool:
    return sample.result.verdict == group_pb2.VERDICT_CORRECT


NOT_RUN_OR_OK = (trajectory_pb2.TOOL_CALL_STATUS_UNSPECIFIED, trajectory_pb2.TOOL_CALL_STATUS_OK)


def num_tool_errors(trajectory: trajectory_pb2.Trajectory) -> int:
    """Tool calls that ran and failed (unknown tool, parse error, timeout, service down); a call
    past the episode's budget never runs and is not one. A handful is the model's doing, a run
    of them a broken tool."""
    return sum(
        1
        for turn in trajectory.turns
        if turn.HasField("tool_call") and turn.tool_call.status not in NOT_RUN_OR_OK
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(groups: Sequence[group_pb2.Group], k: int) -> dict[str, Any]:
    """The metrics of one set of groups (one task type, or all)."""
    if not groups:
        raise ValueError("no groups to evaluate")
    rates, passes, tool_calls_solved, lengths_tokens, rewards = [], [], [], [], []
    num_correct_total = num_tool_calls = num_errors = 0
    for group in groups:
        samples = list(group.samples)
        if not samples:
            raise ValueError(f"group {group.group_id or group.task.task_id!r} has no samples")
        correct = [s for s in samples if is_correct(s)]
        num_correct_total += len(correct)
        rates.append(len(correct) / len(samples))
        passes.append(pass_at_k(len(samples), len(correct), k))
        tool_calls_solved.extend(s.trajectory.num_tool_calls for s in correct)
        lengths_tokens.extend(response_length_tokens(s.trajectory) for s in samples)
        rewards.extend(s.result.reward for s in samples)
        num_tool_calls += sum(s.trajectory.num_tool_calls for s in samples)
        num_errors += sum(num_tool_errors(s.trajectory) for s in samples)
    return {
        "num_prompts": len(groups),
        "num_samples": len(lengths_tokens),
        "num_correct": num_correct_total,
        "num_solved_prompts": sum(1 for rate in rates if rate > 0),
        "avg_at_k": _mean(rates),
        "pass_at_k": _mean(passes),
        "tool_calls_per_solved": _mean(tool_calls_solved),
        "mean_response_length_tokens": _mean(lengths_tokens),
        "mean_reward": _mean(rewards),
        "num_tool_calls": num_tool_calls,
        "num_tool_errors": num_errors,
    }


def evaluate_groups(groups: Iterable[group_pb2.Group], k: int) -> dict[str, Any]:
    """{"k", "by_task_type": {type: metrics}, "overall": metrics} (see the module docstring)."""
    groups = list(groups)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    by_type: dict[str, list[group_pb2.Group]] = {}
    for group in groups:
        by_type.setdefault(group.task.task_type or "unknown", []).append(group)
    return {
        "k": k,
        "by_task_type": {name: summarize(by_type[name], k) for name in sorted(by_type)},
        OVERALL: summarize(groups, k),
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def report_table(report: dict[str, Any]):
    """A rich Table: one row per task type, then the overall row."""
    from rich.table import Table

    k = report["k"]
    table = Table(
        "task type",
        "prompts",
        "samples",
        "correct",
        f"avg@{k}",
        f"pass@{k}",
        "tool calls / solved",
        "response tokens",
        "reward",
        title=f"Evaluation (k={k})",
    )
    rows = [*report["by_task_type"].items(), (OVERALL, report[OVERALL])]
    for index, (name, m) in enumerate(rows):
        table.add_row(
            name,
            _fmt(m["num_prompts"]),
            _fmt(m["num_samples"]),
            _fmt(m["num_correct"]),
            _fmt(m["avg_at_k"]),
            _fmt(m["pass_at_k"]),
            _fmt(m["tool_calls_per_solved"], 2),
            _fmt(m["mean_response_length_tokens"], 1),
            _fmt(m["mean_reward"]),
            end_section=index == len(rows) - 2,
        )
    return table
