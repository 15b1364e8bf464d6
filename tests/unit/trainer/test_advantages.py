"""Advantage estimators, dynamic sampling and token broadcast against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.trainer.advantages import (
    STD_EPS,
    arpo_hard_advantages,
    compute_advantages,
    discounted_token_returns,
    filter_zero_signal_groups,
    reinforce_pp_token_advantages,
    token_advantages,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_grpo_uses_the_sample_std():
    # mean 0.25; sample std sqrt((0.75² + 3·0.25²) / 3) = 0.5 (population std would be 0.433).
    (advantages,) = compute_advantages([t(1, 0, 0, 0)], "grpo")
    expected = [0.75 / (0.5 + STD_EPS), -0.25 / (0.5 + STD_EPS)]
    assert advantages.tolist() == pytest.approx([expected[0]] + [expected[1]] * 3, rel=1e-12)
    assert advantages[0] == pytest.approx(1.5, rel=1e-5)
    assert advantages[0] != pytest.approx(0.75 / math.sqrt(0.75 / 4), rel=1e-3)


def test_grpo_without_std_is_dr_grpo():
    (advantages,) = compute_advantages([t(1, 0, 0, 0)], "grpo", std_normalize=False)
    assert advantages.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25], abs=1e-12)
    (advantages,) = compute_advantages([t(3, 1, 2)], "grpo", std_normalize=False)
    assert advantages.tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-12)


def test_rloo_subtracts_the_mean_of_the_others():
    (first, second) = compute_advantages([t(1, 0, 0, 0), t(3, 1, 2)], "rloo")
    assert first.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3], abs=1e-12)
    assert second.tolist() == pytest.approx([3 - 1.5, 1 - 2.5, 2 - 2.0], abs=1e-12)


def masks(*lengths: int, prompt: int = 0) -> list[list[int]]:
    """Loss masks of samples with `prompt` masked tokens then `lengths[i]` model tokens."""
    return [[0] * prompt + [1] * n for n in lengths]


def test_reinforce_pp_whitens_discounted_token_returns_over_the_batch():
    # Two samples of 2 and 3 model tokens after a 1-token prompt, rewards 1 and 0, gamma 0.5:
    # returns [0.5, 1] and [0, 0, 0]; whitened over the 5 tokens (not over the 2 samples).
    (group,) = reinforce_pp_token_advantages(
        [t(1, 0)], [masks(2, 3, prompt=1)], baseline=False, gamma=0.5
    )
    returns = torch.tensor([0.5, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    whitened = (returns - returns.mean()) / (returns.std(correction=1) + STD_EPS)
    assert group[0].tolist() == pytest.approx([0.0] + whitened[:2].tolist(), rel=1e-12)
    assert group[1].tolist() == pytest.approx([0.0] + whitened[2:].tolist(), rel=1e-12)
    # Whitening over tokens: the token mean is 0 (a per-sample mean would not be).
    live = torch.cat([group[0][1:], group[1][1:]])
    assert float(live.mean()) == pytest.approx(0.0, abs=1e-12)
    # gamma 1: every token of a sample has the same value; no group baseline, so a group whose
    # rewards are all equal still has a signal against the rest of the batch.
    same, other = reinforce_pp_token_advantages(
        [t(1, 1), t(0, 0)], [masks(2, 2), masks(3, 1)], baseline=False
    )
    assert same[0][0] == same[0][1] == same[1][0] > 0 > other[0][0] == other[1][0]


def test_tool_output_tokens_neither_count_in_the_discount_nor_get_a_value():
    mask = [0, 1, 1, 0, 0, 1]  # model, model, tool output x2, model
    returns = discounted_token_returns(2.0, mask, gamma=0.5)
    assert returns.tolist() == [0.0, 0.5, 1.0, 0.0, 0.0, 2.0]


def test_reinforce_pp_baseline_subtracts_the_group_mean_then_whitens_per_token():
    first, second = reinforce_pp_token_advantages(
        [t(1, 0), t(2, 0, 1)], [masks(1, 3), masks(2, 2, 2)], baseline=True
    )
    # centred [0.5, -0.5] and [1, -1, 0], broadcast to 1, 3, 2, 2, 2 tokens.
    tokens = torch.tensor([0.5, -0.5, -0.5, -0.5, 1, 1, -1, -1, 0, 0], dtype=torch.float64)
    mean, std = float(tokens.mean()), float(tokens.std(correction=1))
    assert first[0].tolist() == pytest.approx([(0.5 - mean) / (std + STD_EPS)], rel=1e-9)
    assert second[1].tolist() == pytest.approx([(-1 - mean) / (std + STD_EPS)] * 2, rel=1e-9)
    # Per token, not per sample: the 3-token sample weighs three times in the statistics.
    per_sample = torch.tensor([0.5, -0.5, 1, -1, 0], dtype=torch.float64)
    assert float(first[0][0]) != pytest.approx(float(0.5 / per_sample.std()), rel=1e-3)


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_zero_variance_and_single_sample_groups_give_zero(estimator):
    constant, single, informative = compute_advantages([t(1, 1, 1), t(0.7), t(1, 0)], estimator)
    assert constant.tolist() == [0.0, 0.0, 0.0]
    assert single.tolist() == [0.0]
    assert informative[0] > 0 > informative[1]
    assert all(torch.isfinite(a).all() for a in (constant, single, informative))


def test_singleton_groups_under_reinforce_pp():
    # With a baseline: a singleton gets 0 and leaves the whitening statistics alone.
    alone = reinforce_pp_token_advantages([t(1, 0)], [masks(2, 2)], baseline=True)[0]
    pair, single = reinforce_pp_token_advantages(
        [t(1, 0), t(5.0)], [masks(2, 2), masks(4)], baseline=True
    )
    assert single[0].tolist() == [0.0] * 4
    assert [a.tolist() for a in pair] == [a.tolist() for a in alone]
    # Without a baseline a singleton is an ordinary sample: its high reward is above the mean.
    pair, single = reinforce_pp_token_advantages(
        [t(1, 0), t(5.0)], [masks(2, 2), masks(4)], baseline=False
    )
    assert float(single[0][0]) > 0 and float(pair[1][0]) < 0


def test_reinforce_pp_is_refused_by_the_per_sample_entry_point():
    with pytest.raises(ValueError, match="one advantage per token"):
        compute_advantages([t(1, 0)], "reinforce_pp")
    with pytest.raises(ValueError, match="one mask per sample"):
        reinforce_pp_token_advantages([t(1, 0)], [masks(2)], baseline=True)


def test_unknown_estimator_and_bad_groups_are_rejected():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        compute_advantages([t(1, 0)], "ppo")
    with pytest.raises(ValueError, match="group 1"):
        compute_advantages([t(1, 0), torch.zeros(0)], "grpo")


def test_dynamic_sampling_keeps_only_groups_with_signal():
    groups = [t(1, 1, 1), t(1, 0), t(5), t(0.5, 0.5 + 1e-12), t(0, 0, 1)]
    result = filter_zero_signal_groups(groups)
    assert result.kept_indices == [1, 4]
    assert (result.num_kept, result.num_groups) == (2, 5)
    assert result.kept_ratio == pytest.approx(0.4)
    assert filter_zero_signal_groups([]).kept_ratio == 0.0


def test_token_advantages_follow_the_loss_mask_and_skip_padding():
    seq_index = torch.tensor([[0, 0, 0, 1, 1, -1]])
    loss_mask = torch.tensor([[0, 1, 1, 0, 1, 1]])  # the padding slot's mask is ignored
    result = token_advantages(t(2.0, -3.0), seq_index, loss_mask)
    assert result.tolist() == [[0.0, 2.0, 2.0, 0.0, -3.0, 0.0]]
    with pytest.raises(ValueError, match="only 1 advantages"):
        token_advantages(t(2.0), seq_index, loss_mask)


def test_arpo_hard_attribution_averages_over_the_branches_sharing_a_token():
    # 0 is a root (10 tokens); 1 branched from 0 after 6 tokens; 2 from 1 after 8; 3 another root.
    advantages = t(0.0, -1.0, 4.0, 0.5)
    per_token = arpo_hard_advantages(advantages, [None, 0, 1, None], [0, 6, 8, 0], [10, 12, 9, 5])
    shared_by_all = (0 - 1 + 4) / 3
    assert per_token[0].tolist() == pytest.approx([shared_by_all] * 6 + [0.0] * 4)
    assert per_token[1].tolist() == pytest.approx([shared_by_all] * 6 + [1.5] * 2 + [-1.0] * 4)
    assert per_token[2].tolist() == pytest.approx([shared_by_all] * 6 + [1.5] * 2 + [4.0])
    assert per_token[3].tolist() == pytest.approx([0.5] * 5)


def test_arpo_hard_attribution_with_a_branch_inside_the_shared_prefix():
    # 2 branches from 1 after 4 tokens, before 1 left 0 (at 6): 2 shares only 4 tokens with 0.
    advantages = t(0.0, -1.0, 4.0)
    per_token = arpo_hard_advantages(advantages, [None, 0, 1], [0, 6, 4], [8, 8, 8])
    assert per_token[0].tolist() == pytest.approx([1.0] * 4 + [-0.5] * 2 + [0.0] * 2)
    assert per_token[2].tolist() == pytest.approx([1.0] * 4 + [4.0] * 4)
    with pytest.raises(ValueError, match="tree"):
        arpo_hard_advantages(t(0.0, 1.0), [1, 0], [2, 2], [4, 4])
