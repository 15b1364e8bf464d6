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
- tool_shaping, the tool-call term, from two options (either, both or none):
  - Open-AgentRL's, for a wrong answer (verdict incorrect or no answer) with k tool calls:
    `min(per_call * k, cap)` added to the incorrect reward. With the defaults (per_call 0.1,
    cap 0.4, incorrect −1) the reward of a wrong answer is exactly `min(-0.6, -1 + 0.1 k)`.
  - ARPO's tool-use bonus (`tool_use_bonus`), for a correct answer whose trajectory used every
    tool of `tool_use_bonus.tools` (python and search: ARPO rewards combining them): `+bonus`
    (0.1). "Used" means a call of that tool ran (ok, error or timeout; the rollout sends the
    names as `ScoreRequest.tools_used`); a call that could not be parsed or reached no tool
    does not count.
- scale and bias last, e.g. ASearcher's `(r - 0.5) * 10` is scale 10, bias −5.

Every setting is a field of `RewardConfig`, which `shape` takes whole: `correct_reward`,
`incorrect_reward`, `format_penalty`, `overlong` (L_max, L_buf, kappa), `tool_shaping`
(per_call, cap), `tool_use_bonus` (bonus, tools), `reward_scale` and `reward_bias`.

A verifier error (timeout, crash, sandbox down) gives every component 0, so the reward is just
`bias` (the formula above still holds); the verdict and reason say what failed, and the trainer
must skip such samples rather than learn from a made-up value.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentrl.common.config import RewardConfig
from agentrl.proto.core.v1 import group_pb2
from agentrl.reward.verifier import (
    CORRECT,
    FORMAT_ERROR,
    INCORRECT,
    NO_ANSWER,
    VERIFIER_ERROR,
    Verification,
)


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


def tool_use_bonus(tools_used: Iterable[str], required: Iterable[str], bonus: float) -> float:
    """ARPO's bonus for a correct answer: `bonus` when every `required` tool was used, else 0."""
    return bonus if set(required) <= set(tools_used) else 0.0


def shape(
    verification: Verification,
    config: RewardConfig,
    length_tokens: int,
    num_tool_calls: int,
    tools_used: Iterable[str] = (),
) -> group_pb2.RewardResult:
    """The reward and its components for one verification (verify_time_s is set by the caller);
    `tools_used`: the names of the tools whose calls ran (ARPO's tool-use bonus)."""
    components = group_pb2.RewardComponents()
    verdict = verification.verdict
    if verdict == VERIFIER_ERROR:
        return group_pb2.RewardResult(
            reward=config.reward_bias,
            components=components,
            verdict=verdict,
            reason=verification.reason,
        )
    if verdict == FORMAT_ERROR:
        components.format = config.format_penalty
    else:
        span = config.correct_reward - config.incorrect_reward
        components.correctness = config.incorrect_reward + span * verification.score
    overlong = config.overlong
    if overlong.enabled:
        components.overlong_penalty = overlong_penalty(
            length_tokens,
            overlong.max_length_tokens,
            overlong.buffer_tokens,
            overlong.penalty_factor,
        )
    if config.tool_shaping.enabled and verdict in (INCORRECT, NO_ANSWER):
        components.tool_shaping = tool_shaping(
            num_tool_calls, config.tool_shaping.per_call, config.tool_shaping.cap
        )
    bonus = config.tool_use_bonus
    if bonus.enabled and verdict == CORRECT:
        components.tool_shaping += tool_use_bonus(tools_used, bonus.tools, bonus.bonus)
    total = (
        components.correctness
        + components.format
        + components.overlong_penalty
        + components.tool_shaping
    )
    return group_pb2.RewardResult(
        reward=config.reward_scale * total + config.reward_bias,
        components=components,
        verdict=verdict,
        reason=verification.reason,
    )
