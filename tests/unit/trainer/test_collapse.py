"""The collapse detector on hand-made step records (the quickstart's collapse of issue #17 among
them), its step-line warning, and the best evaluated checkpoint kept beside the last."""

from __future__ import annotations

import json

import pytest

from agentrl.common.config import CollapseConfig
from agentrl.trainer.checkpoint import BestCheckpoint
from agentrl.trainer.collapse import CollapseDetector, describe
from agentrl.trainer.main import step_line


def record(
    step: int,
    accuracy: float,
    entropy: float = 0.3,
    longest: int = 140,
    mean_length: float = 36.0,
    **extra,
):
    return {
        "step": step,
        "accuracy": accuracy,
        "reward_mean": 2 * accuracy - 1,
        "entropy": entropy,
        "response_length_max": longest,
        "response_length_mean": mean_length,
        "kept_group_ratio": 1.0,
        "grad_norm": 0.5,
        "time_waiting_s": 1.0,
        "time_training_s": 1.0,
        "time_weight_sync_s": 0.1,
        **extra,
    }


def test_a_healthy_run_raises_nothing() -> None:
    detector = CollapseDetector(CollapseConfig())
    for step, accuracy in enumerate([0.4, 0.5, 0.45, 0.6, 0.7, 0.68, 0.8, 0.9], 1):
        flags = detector.check(record(step, accuracy, mean_length=20 + 2 * step))
        assert flags["collapse_warning"] == 0, (step, flags)


def test_one_looping_episode_in_a_healthy_step_raises_nothing() -> None:
    # Seed 0 of the 5-seed quickstart measurement (issue #17), steps 1-2 and 9-12: the SFT model
    # ends ~1 episode in 200 in 8 failing tool calls; one such episode made the longest
    # response 36 -> 515 and 36 -> 616 tokens while the mean moved 20 -> 26 and 31 -> 41.
    detector = CollapseDetector(CollapseConfig())
    steps = [(0.406, 0.463, 36, 20), (0.375, 0.502, 515, 26)]
    steps += [(0.800, 0.147, 36, 29), (0.781, 0.124, 221, 34), (0.854, 0.118, 36, 31)]
    steps += [(0.875, 0.115, 616, 41)]
    for step, (accuracy, entropy, longest, mean_length) in enumerate(steps, 1):
        flags = detector.check(record(step, accuracy, entropy, longest, mean_length))
        assert flags["collapse_warning"] == 0, (step, flags)


def test_the_quickstart_collapse_of_issue_17_is_flagged_at_each_signal() -> None:
    detector = CollapseDetector(CollapseConfig())
    history = [record(16, 0.9), record(17, 0.94), record(18, 0.96, entropy=0.03)]
    assert [detector.check(r)["collapse_warning"] for r in history] == [0, 0, 0]
    # Step 19: entropy 0.005, the longest response 146 -> 621 tokens, accuracy 0.96 -> 0.5; the
    # mean response 36 -> 200 tokens (the issue gives the longest only: hand-made).
    flags = detector.check(record(19, 0.5, entropy=0.005, longest=621, mean_length=200))
    assert flags == {
        "collapse_accuracy_drop": 1,
        "collapse_reward_drop": 1,
        "collapse_low_entropy": 1,
        "collapse_length_blowup": 1,
        "collapse_warning": 1,
    }
    line = step_line(record(19, 0.5, **flags))
    assert "WARNING collapse? accuracy fell, reward fell, entropy below floor" in line
    assert "response length exploded" in line
    assert describe(record(1, 0.5)) == ""


def test_each_threshold_is_the_boundary_and_zero_turns_it_off() -> None:
    config = CollapseConfig(max_accuracy_drop=0.25, window_steps=2)
    detector = CollapseDetector(config)
    detector.check(record(1, 0.8))
    assert detector.check(record(2, 0.55))["collapse_accuracy_drop"] == 0  # exactly 0.25
    assert detector.check(record(3, 0.5))["collapse_accuracy_drop"] == 1
    # Only the last window_steps steps count: 0.8 left the window, 0.55 and 0.5 remain.
    assert detector.check(record(4, 0.4))["collapse_accuracy_drop"] == 0
    off = CollapseDetector(
        CollapseConfig(max_accuracy_drop=0, max_reward_drop=0, min_entropy=0, max_length_growth=0)
    )
    off.check(record(1, 1.0))
    assert off.check(record(2, 0.0, entropy=0.0, mean_length=10_000))["collapse_warning"] == 0
    # The length signal's boundary: 3x the window's highest mean is not above it.
    growth = CollapseDetector(CollapseConfig(max_length_growth=3.0, window_steps=2))
    growth.check(record(1, 0.5, mean_length=20))
    growth.check(record(2, 0.5, mean_length=30))
    assert growth.check(record(3, 0.5, mean_length=90))["collapse_length_blowup"] == 0
    assert growth.check(record(4, 0.5, mean_length=271))["collapse_length_blowup"] == 1


def test_a_resumed_run_refills_the_window_from_its_metrics() -> None:
    detector = CollapseDetector(CollapseConfig())
    detector.extend([record(1, 0.2), record(2, 0.9)])
    assert detector.check(record(3, 0.5))["collapse_accuracy_drop"] == 1


class SavingBackend:
    """What BestCheckpoint asks of a backend: save_pretrained (writes a marker)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def is_main_process(self) -> bool:
        return True

    def save_pretrained(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "weights.txt").write_text(self.tag)
        return directory


def test_best_keeps_the_highest_avg_at_k_and_ties_keep_the_earlier(tmp_path) -> None:
    best = BestCheckpoint(tmp_path)
    assert best.record() is None and best.is_better(0.0)
    for step, avg, better in [(0, 0.41, True), (10, 0.9, True), (20, 0.6, False), (30, 0.9, False)]:
        assert best.is_better(avg) is better
        if better:
            best.save(SavingBackend(f"step {step}"), {"step": step, "eval_avg_at_k": avg})
    assert best.record() == {"step": 10, "eval_avg_at_k": 0.9}
    assert (tmp_path / "best" / "weights.txt").read_text() == "step 10"
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no partial left behind


@pytest.mark.parametrize("keys", [{}, {"eval_avg_at_k": 0.7}])
def test_the_step_line_names_the_best_evaluation(keys) -> None:
    line = step_line(
        record(10, 0.9, **keys, **({"eval_best_avg_at_k": 0.8, "best_step": 4} if keys else {}))
    )
    if keys:
        assert "eval avg@k 0.700 (best 0.800 at step 4)" in line
    else:
        assert "best" not in line
