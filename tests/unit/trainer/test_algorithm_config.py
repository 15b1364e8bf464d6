"""Bad trainer and algorithm settings are rejected with a message that names the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentrl.common.config import AlgorithmConfig, ConfigError, load_config


def issues(tmp_path, text: str) -> dict[str, str]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(recipe, env={})
    return {issue.path: issue.message for issue in info.value.issues}


def test_clip_high_below_clip_low_is_rejected(tmp_path):
    found = issues(tmp_path, "algorithm:\n  clip_low: 0.2\n  clip_high: 0.1\n")
    assert "clip_high (0.1) must be >= clip_low (0.2)" in found["algorithm"]
    assert AlgorithmConfig(clip_low=0.2, clip_high=0.2).clip_high == 0.2  # symmetric is fine


def test_unknown_estimator_is_rejected_with_the_choices(tmp_path):
    found = issues(tmp_path, "algorithm:\n  advantage: ppo\n")
    assert "'ppo'" in found["algorithm.advantage"] and "'rloo'" in found["algorithm.advantage"]


def test_negative_max_staleness_is_rejected(tmp_path):
    found = issues(tmp_path, "trainer:\n  max_staleness: -1\n")
    assert "greater than or equal to 0" in found["trainer.max_staleness"]


def test_norm_mode_needs_its_constant():
    with pytest.raises(ValidationError, match="loss_agg_norm_length_tokens is required"):
        AlgorithmConfig(loss_agg="seq-mean-token-sum-norm")
    config = AlgorithmConfig(loss_agg="seq-mean-token-sum-norm", loss_agg_norm_length_tokens=4096)
    assert config.loss_agg_norm_length_tokens == 4096


def test_decoupled_ppo_settings_are_checked(tmp_path):
    found = issues(
        tmp_path, "algorithm:\n  behaviour_weight_cap: 0.5\n  behaviour_weight_cap_mode: drop\n"
    )
    assert set(found) == {"algorithm.behaviour_weight_cap", "algorithm.behaviour_weight_cap_mode"}
    assert "'clamp'" in found["algorithm.behaviour_weight_cap_mode"]
    defaults = AlgorithmConfig()
    assert (defaults.decoupled_ppo, defaults.behaviour_weight_cap, defaults.gspo) == (
        False,
        5.0,
        False,
    )
