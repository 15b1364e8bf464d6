"""The collapse detector: a warning in the step line, and a metric, when a run starts to fall apart.

    detector = CollapseDetector(config.trainer.collapse)
    flags = detector.check(record)     # {"collapse_warning": 0|1, "collapse_<signal>": 0|1, ...}

A run of the quickstart reached 0.96 training accuracy and collapsed in two steps (issue #17):
entropy had fallen from 0.47 to 0.03 before it, the longest response went from 146 to 621
tokens and accuracy fell to nothing. Each signal compares this step with the previous
`window_steps` steps (the step's own record against the window's best):

- `collapse_accuracy_drop`: accuracy fell by more than `max_accuracy_drop` below the window's
  highest accuracy;
- `collapse_reward_drop`: mean reward fell by more than `max_reward_drop` below the window's
  highest mean reward;
- `collapse_low_entropy`: the mean token entropy is below `min_entropy` (falling entropy is the
  first sign, before any accuracy is lost);
- `collapse_length_blowup`: the mean response length is more than `max_length_growth` times
  the window's highest mean (a policy that stopped ending its answers).

The length signal reads the mean, not the longest response: the quickstart's SFT model itself
ends about one episode in 200 in a loop of 8 failing tool calls (~600 tokens, against ~36 for a
good episode), so a step of 64 samples holds one such episode about a quarter of the time. On
the longest response (3x the window's) the signal fired 10 times in the 5-seed measurement of
issue #17, 1-3 times in every seed, each time one such episode in a healthy step, in runs that
all met the goal. On the mean none fired; the highest ratio of a step's mean to its window's
highest was 2.60 (seed 2, step 3: tool use 0.33 -> 0.73 and one loop, while direct answers still
kept the window's mean at 17 tokens), hence the default 4. A policy that stopped ending its
answers multiplies the mean many times over.

`collapse_warning` is 1 when any signal is; a threshold of 0 turns its signal off. The flags
are numbers, so they are Prometheus gauges like every step metric (the Grafana trainer panel
plots `collapse_warning`). The detector only warns: it changes nothing in training. On resume
the history is refilled from `metrics.jsonl` (rl_loop.py), so a window spans the restart.

Not covered: acting on a warning (rolling back to `best/`, lowering the learning rate): the
best evaluated checkpoint is kept (checkpoint.py) for a person to pick up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

SIGNALS = ("accuracy_drop", "reward_drop", "low_entropy", "length_blowup")
# How each signal reads in the step line.
DESCRIPTIONS = {
    "accuracy_drop": "accuracy fell",
    "reward_drop": "reward fell",
    "low_entropy": "entropy below floor",
    "length_blowup": "response length exploded",
}


class CollapseDetector:
    """Compares each step's record with the previous `window_steps` records."""

    def __init__(self, config: Any) -> None:
        self.config = config  # a CollapseConfig (libs/common/config.py)
        self.history: deque[dict[str, Any]] = deque(maxlen=max(config.window_steps, 1))

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        """Records of steps before this process started (a resumed run's metrics.jsonl)."""
        for record in records:
            self.history.append(record)

    def check(self, record: dict[str, Any]) -> dict[str, int]:
        """The flags of this step (then the step joins the window)."""
        c, window = self.config, list(self.history)
        flags = dict.fromkeys(SIGNALS, 0)
        if window:
            best_accuracy = max(_get(r, "accuracy") for r in window)
            best_reward = max(_get(r, "reward_mean") for r in window)
            longest_mean = max(_get(r, "response_length_mean") for r in window)
            if (
                c.max_accuracy_drop
                and best_accuracy - _get(record, "accuracy") > c.max_accuracy_drop
            ):
                flags["accuracy_drop"] = 1
            if c.max_reward_drop and best_reward - _get(record, "reward_mean") > c.max_reward_drop:
                flags["reward_drop"] = 1
            if (
                c.max_length_growth
                and longest_mean > 0
                and _get(record, "response_length_mean") > c.max_length_growth * longest_mean
            ):
                flags["length_blowup"] = 1
        entropy = record.get("entropy")
        if c.min_entropy and entropy is not None and entropy < c.min_entropy:
            flags["low_entropy"] = 1
        self.history.append(record)
        result = {f"collapse_{name}": value for name, value in flags.items()}
        result["collapse_warning"] = int(any(flags.values()))
        return result


def describe(record: dict[str, Any]) -> str:
    """The step line's warning for a record with `collapse_warning` set, else ''."""
    if not record.get("collapse_warning"):
        return ""
    reasons = [DESCRIPTIONS[name] for name in SIGNALS if record.get(f"collapse_{name}")]
    return "WARNING collapse? " + ", ".join(reasons)


def _get(record: dict[str, Any], name: str) -> float:
    value = record.get(name)
    return float(value) if value is not None else 0.0
