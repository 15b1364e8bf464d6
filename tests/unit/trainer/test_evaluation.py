"""Evaluation metrics against hand-computed values: pass@k (unbiased, Codex paper), avg@k,
tool calls per solved problem, response length, per task type and overall."""

from __future__ import annotations

import pytest

from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.trainer.evaluation import evaluate_groups, pass_at_k, report_table

CORRECT, WRONG = group_pb2.VERDICT_CORRECT, group_pb2.VERDICT_INCORRECT
PROMPT_TOKENS = 5


def sample(
    verdict: int, tool_calls: int = 0, response_tokens: int = 10, reward: float = 0.0
) -> group_pb2.ScoredTrajectory:
    traj = trajectory_pb2.Trajectory(
        token_ids=list(range(PROMPT_TOKENS + response_tokens)),
        prompt_length=PROMPT_TOKENS,
        num_tool_calls=tool_calls,
    )
    return group_pb2.ScoredTrajectory(
        trajectory=traj, result=group_pb2.RewardResult(verdict=verdict, reward=reward)
    )


def group(task_type: str, *samples: group_pb2.ScoredTrajectory) -> group_pb2.Group:
    return group_pb2.Group(
        task=task_pb2.RolloutTask(task_type=task_type, num_samples=len(samples)),
        samples=list(samples),
    )


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 2, 0.0),  # nothing correct
        (4, 4, 2, 1.0),  # everything correct
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 1, 1, 0.25),  # pass@1 = c/n
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (4, 3, 2, 1.0),  # n - c = 1 < k: every pair holds a correct one
    ],
)
def test_pass_at_k_unbiased_estimator(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (0, 0, 1, "at least one sample"),
        (4, 5, 2, "correct count"),
        (4, -1, 2, "correct count"),
        (4, 1, 5, "k must be in"),
        (4, 1, 0, "k must be in"),
    ],
)
def test_pass_at_k_rejects_bad_counts(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_metrics_per_task_type_and_overall() -> None:
    groups = [
        # math p1: 1 of 4 correct (2 tool calls, 20 tokens); others 10 tokens
        group("math", sample(CORRECT, 2, 20, 1.0), sample(WRONG), sample(WRONG), sample(WRONG)),
        # math p2: 0 of 4 correct, 30 tokens each
        group("math", *[sample(WRONG, 1, 30) for _ in range(4)]),
        # code p3: 4 of 4 correct, tool calls 0,1,2,3, 8 tokens each
        group("code", *[sample(CORRECT, t, 8, 1.0) for t in range(4)]),
    ]
    report = evaluate_groups(groups, k=2)
    assert report["k"] == 2 and list(report["by_task_type"]) == ["code", "math"]
    math, code, overall = (
        report["by_task_type"]["math"],
        report["by_task_type"]["code"],
        report["overall"],
    )
    assert (math["num_prompts"], math["num_samples"], math["num_correct"]) == (2, 8, 1)
    assert math["num_solved_prompts"] == 1
    assert math["avg_at_k"] == pytest.approx((0.25 + 0.0) / 2)
    assert math["pass_at_k"] == pytest.approx((0.5 + 0.0) / 2)
    assert math["tool_calls_per_solved"] == pytest.approx(2.0)
    assert math["mean_response_length_tokens"] == pytest.approx((20 + 3 * 10 + 4 * 30) / 8)
    assert math["mean_reward"] == pytest.approx(1 / 8)
    assert code["avg_at_k"] == code["pass_at_k"] == 1.0
    assert code["tool_calls_per_solved"] == pytest.approx(1.5)
    assert code["mean_response_length_tokens"] == pytest.approx(8.0)
    assert (overall["num_prompts"], overall["num_samples"], overall["num_correct"]) == (3, 12, 5)
    assert overall["avg_at_k"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert overall["pass_at_k"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert overall["tool_calls_per_solved"] == pytest.approx((2 + 0 + 1 + 2 + 3) / 5)


def test_failed_tool_calls_are_counted() -> None:
    ok, unknown = trajectory_pb2.TOOL_CALL_STATUS_OK, trajectory_pb2.TOOL_CALL_STATUS_ERROR
    failing = sample(WRONG, 2)
    failing.trajectory.turns.extend(
        [
            trajectory_pb2.Turn(
                index=0, tool_call=trajectory_pb2.ToolCall(tool="search", status=ok)
            ),
            trajectory_pb2.Turn(
                index=1, tool_call=trajectory_pb2.ToolCall(tool="search", status=unknown)
            ),
            trajectory_pb2.Turn(index=2),
        ]
    )  # the final answer: no call
    metrics = evaluate_groups([group("qa", failing, sample(CORRECT, 1))], k=1)["overall"]
    assert (metrics["num_tool_calls"], metrics["num_tool_errors"]) == (3, 1)


def test_no_correct_sample_gives_none_for_tool_calls_per_solved() -> None:
    report = evaluate_groups([group("qa", sample(WRONG, 3), sample(WRONG, 1))], k=2)
    metrics = report["overall"]
    assert metrics["tool_calls_per_solved"] is None
    assert metrics["avg_at_k"] == metrics["pass_at_k"] == 0.0
    table = report_table(report)
    tool_column = next(c for c in table.columns if c.header == "tool calls / solved")
    assert list(tool_column.cells) == ["-", "-"]  # qa row, overall row


def test_partial_verdict_is_not_correct() -> None:
    groups = [group("code", sample(group_pb2.VERDICT_PARTIAL, reward=0.5), sample(CORRECT))]
    assert evaluate_groups(groups, k=1)["overall"]["avg_at_k"] == pytest.approx(0.5)


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="no groups"):
        evaluate_groups([], k=1)
    with pytest.raises(ValueError, match="has no samples"):
        evaluate_groups([group("math")], k=1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate_groups([group("math", sample(CORRECT))], k=0)
    with pytest.raises(ValueError, match="k must be in"):  # fewer samples than k
        evaluate_groups([group("math", sample(CORRECT))], k=2)


def test_report_table_has_a_row_per_task_type_and_overall() -> None:
    report = evaluate_groups([group("math", sample(CORRECT)), group("code", sample(WRONG))], k=1)
    table = report_table(report)
    assert table.row_count == 3
    assert list(table.columns[0].cells) == ["code", "math", "overall"]
    assert "pass@1" in [c.header for c in table.columns]
