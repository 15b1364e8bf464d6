"""Reward shaping against the formulas of ALGORITHMS.md §3, at the boundary values."""

from __future__ import annotations

import pytest

from agentrl.common.config import (
    OverlongPenaltyConfig,
    RewardConfig,
    ToolShapingConfig,
    ToolUseBonusConfig,
)
from agentrl.reward.shaping import overlong_penalty, shape
from agentrl.reward.verifier import (
    CORRECT,
    FORMAT_ERROR,
    INCORRECT,
    NO_ANSWER,
    PARTIAL,
    VERIFIER_ERROR,
    Verification,
)

L_MAX, L_BUF = 20480, 4096


def dapo(length: int, kappa: float = 1.0) -> float:
    """The formula as written: min(0, -(L - (L_max - L_buf)) / L_buf * kappa)."""
    return min(0.0, -(length - (L_MAX - L_BUF)) / L_BUF * kappa)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 0.0),
        (L_MAX - L_BUF, 0.0),
        (L_MAX - L_BUF + 1, -1 / 4096),
        (L_MAX - L_BUF // 2, -0.5),  # the middle of the buffer
        (L_MAX, -1.0),
    ],
)
def test_overlong_penalty_at_the_boundaries(length: int, expected: float) -> None:
    assert overlong_penalty(length, L_MAX, L_BUF, 1.0) == pytest.approx(expected)
    assert overlong_penalty(length, L_MAX, L_BUF, 1.0) == pytest.approx(dapo(length))
    assert overlong_penalty(length, L_MAX, L_BUF, 0.5) == pytest.approx(dapo(length, 0.5))


def test_overlong_penalty_stays_at_kappa_past_l_max() -> None:
    assert overlong_penalty(L_MAX + 5000, L_MAX, L_BUF, 1.0) == -1.0


@pytest.mark.parametrize("k", range(7))
def test_tool_shaping_for_wrong_answers(k: int) -> None:
    settings = RewardConfig(
        tool_shaping=ToolShapingConfig(enabled=True), overlong=OverlongPenaltyConfig(enabled=False)
    )
    wrong = shape(Verification(INCORRECT, 0.0, "wrong"), settings, 0, num_tool_calls=k)
    assert wrong.reward == pytest.approx(min(-0.6, -1 + 0.1 * k))
    assert wrong.components.correctness == -1.0
    assert wrong.components.tool_shaping == pytest.approx(min(-0.6, -1 + 0.1 * k) + 1)
    missing = shape(Verification(NO_ANSWER, 0.0, "none"), settings, 0, num_tool_calls=k)
    assert missing.reward == pytest.approx(min(-0.6, -1 + 0.1 * k))
    right = shape(Verification(CORRECT, 1.0, "ok"), settings, 0, num_tool_calls=k)
    assert right.reward == 1.0 and right.components.tool_shaping == 0.0
    broken = shape(Verification(FORMAT_ERROR, 0.0, "format"), settings, 0, num_tool_calls=k)
    assert broken.reward == -1.0 and broken.components.format == -1.0


def test_tool_shaping_is_off_unless_enabled() -> None:
    result = shape(Verification(INCORRECT, 0.0, "wrong"), RewardConfig(), 0, num_tool_calls=4)
    assert result.reward == -1.0 and result.components.tool_shaping == 0.0


def test_arpo_tool_use_bonus_needs_a_right_answer_and_every_tool() -> None:
    settings = RewardConfig(
        tool_use_bonus=ToolUseBonusConfig(enabled=True),
        overlong=OverlongPenaltyConfig(enabled=False),
    )
    right = Verification(CORRECT, 1.0, "")
    both = shape(right, settings, 100, 2, tools_used=["python", "search"])
    assert both.reward == pytest.approx(1.1) and both.components.tool_shaping == pytest.approx(0.1)
    for used in (["python"], ["search"], []):
        assert shape(right, settings, 100, 1, tools_used=used).reward == 1.0
    wrong = shape(Verification(INCORRECT, 0.0, ""), settings, 100, 2, ["python", "search"])
    assert wrong.reward == -1.0
    # Off by default; with one required tool, that tool alone earns it.
    assert shape(right, RewardConfig(), 100, 2, ["python", "search"]).reward == 1.0
    python_only = settings.model_copy(
        update={"tool_use_bonus": ToolUseBonusConfig(enabled=True, tools=["python"])}
    )
    assert shape(right, python_only, 100, 1, ["python"]).reward == pytest.approx(1.1)


def test_tools_used_counts_only_calls_that_ran() -> None:
    from agentrl.common.agent.group import tools_used
    from agentrl.proto.core.v1 import trajectory_pb2 as t

    traj = t.Trajectory()
    for tool, status in [
        ("python", t.TOOL_CALL_STATUS_ERROR),
        ("search", t.TOOL_CALL_STATUS_UNAVAILABLE),
        ("calc", t.TOOL_CALL_STATUS_PARSE_ERROR),
        ("python", t.TOOL_CALL_STATUS_OK),
    ]:
        traj.turns.add(tool_call=t.ToolCall(tool=tool, status=status))
    traj.turns.add()  # a turn without a call
    assert tools_used(traj) == ["python"]


def test_components_add_up_with_scale_and_bias() -> None:
    # ASearcher: F1 in [0, 1] then (r - 0.5) * 10; F1 0.8 -> 3.0; minus the overlong share.
    settings = RewardConfig(
        correct_reward=1.0, incorrect_reward=0.0, reward_scale=10.0, reward_bias=-5.0
    )
    result = shape(Verification(PARTIAL, 0.8, "f1"), settings, L_MAX - L_BUF // 4, 0)
    assert result.components.correctness == pytest.approx(0.8)
    assert result.components.overlong_penalty == pytest.approx(-0.75)
    assert result.reward == pytest.approx(10 * (0.8 - 0.75) - 5)


def test_partial_scores_map_linearly_onto_the_reward_range() -> None:
    result = shape(Verification(PARTIAL, 0.25, "1/4 tests"), RewardConfig(), 0, 0)
    assert result.reward == pytest.approx(-1 + 2 * 0.25)


def test_verifier_error_has_no_components_and_keeps_the_reason() -> None:
    settings = RewardConfig(
        tool_shaping=ToolShapingConfig(enabled=True), reward_bias=-5.0, reward_scale=10.0
    )
    result = shape(Verification(VERIFIER_ERROR, 0.0, "timeout: x"), settings, L_MAX, 3)
    assert result.reward == -5.0 and result.verdict == VERIFIER_ERROR
    assert result.components.overlong_penalty == 0 and result.reason == "timeout: x"


def test_bad_settings_and_inputs_are_value_errors() -> None:
    with pytest.raises(ValueError, match="buffer_tokens .200. must not exceed max_length_tokens"):
        OverlongPenaltyConfig(max_length_tokens=100, buffer_tokens=200)
    with pytest.raises(ValueError, match="length_tokens"):
        overlong_penalty(-1, L_MAX, L_BUF, 1.0)
