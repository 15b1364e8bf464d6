"""Reward shaping (ALGORITHMS.md §3): from a verifier's score to the reward and its components.

    reward = scale * (correctness + format + overlong_penalty + tool_shaping) + bias

- correctness: the verifier's score in [0, 1] mapped linearly onto
  [incorrect_reward, correct_reward] (±1 by default); 0 when the format gate failed or the
  verifier could not finish.
- format: `format_penalty` (−1) when the format gate failed, else 0.
- overlong_penalty (DAPO soft punishment) for a response of L tokens, tool output included:
  `min(0, -(L - (L_max - L_buf)) / L_buf * kappa)`: 0 up to L_max - L_buf, falling linearly to
  −kappa at L_max. Past L_max the DAPO paper's value −kappa holds (the response was cut there
  anyway; the open formula would keep falling).
- tool_shaping (Open-AgentRL) for a wrong answer (verdict incorrect or no answer) with k tool
  calls: `min(per_call * k, cap)` added to the incorrect reward. With the defaults (per_call 0.1,
  cap 0.4, incorrect −1) the reward of a wrong answer is exactly `min(-0.6, -1 + 0.1 k)`.
- scale and bias last, e.g. ASearcher's `(r - 0.5) * 10` is scale 10, bias −5.

A verifier error (timeout, crash, sandbox down) gives every component 0, so the reward is just
`bias` (the formula above still holds); the verdict and reason say what failed, and the trainer
must skip such samples rather than learn from a made-up value.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.proto.core.v1 import group_pb2
from agentrl.reward.interface import (
    FORMAT_ERROR,
    INCORRECT,
    NO_ANSWER,
    VERIFIER_ERROR,
    Verification,
)


@dataclass(frozen=True)
class ShapingSettings:
    """The shaping share of RewardConfig (see its field docs)."""

    correct_reward: float = 1.0
    incorrect_reward: float = -1.0
    format_penalty: float = -1.0
    overlong_enabled: bool = True
    overlong_max_length_tokens: int = 20480
    overlong_buffer_tokens: int = 4096
    overlong_penalty_factor: float = 1.0
    tool_shaping_enabled: bool = False
    tool_shaping_per_call: float = 0.1
    tool_shaping_cap: float = 0.4
    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if (
            self.overlong_buffer_tokens <= 0
            or self.overlong_buffer_tokens > self.overlong_max_length_tokens
        ):
            raise ValueError("overlong_buffer_tokens must be in (0, overlong_max_length_tokens]")


def overlong_penalty(
    length_tokens: int, max_length_tokens: int, buffer_tokens: int, factor: float
) -> float:
    """DAPO's soft overlong punishment (≤ 0) for a response of `length_tokens`."""
    if length_tokens < 0:
        raise ValueError(f"length_tokens must be >= 0, got {length_tokens}")
    expected = max_length_tokens - buffer_tokens
    length = min(length_tokens, max_length_tokens)
    return min(0.0, -(length - expected) / buffer_tokens * factor)


def tool_shaping(num_tool_calls: int, per_call: float, cap: float) -> float:
    """Open-AgentRL's bonus (≥ 0) for a wrong answer reached with `num_tool_calls` tool calls."""
    if num_tool_calls < 0:
        raise ValueError(f"num_tool_calls must be >= 0, got {num_tool_calls}")
    return min(per_call * num_tool_calls, cap)


def shape(
    verification: Verification, settings: ShapingSettings, length_tokens: int, num_tool_calls: int
) -> group_pb2.RewardResult:
    """The reward and its components for one verification (verify_time_s is set by the caller)."""
    components = group_pb2.RewardComponents()
    verdict = verification.verdict
    if verdict == VERIFIER_ERROR:
        return group_pb2.RewardResult(
            reward=settings.bias, components=components, verdict=verdict, reason=verification.reason
        )
    if verdict == FORMAT_ERROR:
        components.format = settings.format_penalty
    else:
        span = settings.correct_reward - settings.incorrect_reward
        components.correctness = settings.incorrect_reward + span * verification.score
    if settings.overlong_enabled:
        components.overlong_penalty = overlong_penalty(
            length_tokens,
            settings.overlong_max_length_tokens,
            settings.overlong_buffer_tokens,
            settings.overlong_penalty_factor,
        )
    if settings.tool_shaping_enabled and verdict in (INCORRECT, NO_ANSWER):
        components.tool_shaping = tool_shaping(
            num_tool_calls, settings.tool_shaping_per_call, settings.tool_shaping_cap
        )
    total = (
        components.correctness
        + components.format
        + components.overlong_penalty
        + components.tool_shaping
    )
    return group_pb2.RewardResult(
        reward=settings.scale * total + settings.bias,
        components=components,
        verdict=verdict,
        reason=verification.reason,
    )
