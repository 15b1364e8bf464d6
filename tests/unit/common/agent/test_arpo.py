"""ARPO's pure logic: normalised entropy, the branching decision, budget accounting, and the
prefix a branch copy shares with its parent (ALGORITHMS.md §4)."""

from __future__ import annotations

import math

import pytest

from agentrl.common.agent.arpo import (
    TreeBudget,
    branch,
    branch_probability,
    normalised_entropy,
    window_entropy,
)
from agentrl.common.config import ARPOConfig
from agentrl.proto.core.v1 import trajectory_pb2

VOCAB = 1000


def uniform_top(k: int) -> list[tuple[int, float]]:
    return [(i, -math.log(k)) for i in range(k)]


def test_entropy_is_normalised_by_log_vocab_and_ignores_masked_tokens() -> None:
    assert normalised_entropy(uniform_top(10), VOCAB) == pytest.approx(
        math.log(10) / math.log(VOCAB)
    )
    assert normalised_entropy([(3, 0.0), (4, -math.inf)], VOCAB) == 0.0  # one token fits
    assert normalised_entropy(uniform_top(VOCAB), VOCAB) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        normalised_entropy(uniform_top(2), 1)


def test_window_entropy_is_the_mean_over_the_first_k_tokens() -> None:
    tokens = [uniform_top(10), [(1, 0.0)], uniform_top(100)]
    expected = (math.log(10) / math.log(VOCAB)) / 2
    assert window_entropy(tokens, 2, VOCAB) == pytest.approx(expected)
    assert window_entropy([], 20, VOCAB) is None


def test_branch_probability_falls_as_entropy_rises_and_is_clipped() -> None:
    assert branch_probability(0.6, 0.5, 0.5, 0.2) == pytest.approx(0.6)  # no change: P = U
    assert branch_probability(0.6, 1.0, 0.5, 0.4) == pytest.approx(0.4)  # rise: branch likelier
    assert branch_probability(0.6, 0.0, 0.5, 0.4) == pytest.approx(0.8)
    assert branch_probability(0.1, 1.0, 0.0, 1.0) == 0.0
    assert branch_probability(0.9, 0.0, 1.0, 1.0) == 1.0
    tau = 0.5
    assert branch_probability(0.6, 1.0, 0.5, 0.4) <= tau < branch_probability(0.6, 0.5, 0.5, 0.4)


def test_budget_gives_exactly_total_slots_and_at_most_beam_minus_one_copies() -> None:
    budget = TreeBudget(total=5, beam_size=3)
    assert budget.reserve(3) == [0, 1, 2]
    assert budget.copies() == [3, 4]  # beam_size - 1 = 2
    assert budget.copies() == [] and budget.remaining == 0 and budget.reserve(4) == []
    single = TreeBudget(total=4, beam_size=1)
    assert single.copies() == [] and single.reserve(9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="beam_size"):
        TreeBudget(total=4, beam_size=0)
    with pytest.raises(ValueError, match="initial_samples"):
        ARPOConfig(initial_samples=0)
    with pytest.raises(ValueError, match="beta"):
        ARPOConfig(beta=-1.0)


def test_a_branch_shares_the_prefix_up_to_the_turn_it_resamples() -> None:
    parent = trajectory_pb2.Trajectory(
        trajectory_id="t/s0",
        task_id="t",
        prompt_length=3,
        token_ids=list(range(12)),
        behaviour_logprobs=[0, 0, 0, -0.1, -0.2, 0, 0, -0.3, -0.4, -0.5, 0, 0],
        loss_mask=[0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0],
        policy_versions=[-1, -1, -1, 2, 2, -1, -1, 2, 2, 2, -1, -1],
        num_tool_calls=2,
    )
    parent.turns.add(
        index=0, response_start=3, response_end=5, observation_start=5, observation_end=7
    ).tool_call.status = trajectory_pb2.TOOL_CALL_STATUS_OK
    parent.turns.add(
        index=1, response_start=7, response_end=10, observation_start=10, observation_end=12
    ).tool_call.status = trajectory_pb2.TOOL_CALL_STATUS_OK
    child = branch(parent, 1, "t/s5", 5)
    assert child.parent_trajectory_id == "t/s0" and child.branch_point == 7
    assert child.trajectory_id == "t/s5" and child.sample_index == 5
    assert list(child.token_ids) == list(range(7)) and len(child.turns) == 1
    assert list(child.loss_mask) == [0, 0, 0, 1, 1, 0, 0]
    assert len(child.behaviour_logprobs) == len(child.policy_versions) == 7
    assert child.num_tool_calls == 1 and child.prompt_length == 3
