"""The contract every verifier follows: `VerifyInput` in, `Verification` out.

A verifier judges one response against its ground truth and says why. It returns a score in
[0, 1] (1: fully correct; code pass fractions and QA F1 sit in between) and a `Verdict`; the
scorer (agentrl.reward.scorer) maps the score onto the configured reward range and applies
shaping. Verifiers never raise for a bad response: a response without an answer is
`VERDICT_NO_ANSWER`, a broken format `VERDICT_FORMAT_ERROR`. They raise `ValueError` only for a
bad *request* (unparseable ground truth), which the service answers with INVALID_ARGUMENT.

Built-in verifiers live beside this file, one module each; `agentrl.reward.registry` maps task
types to them (a plain dict) and loads custom ones by import path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agentrl.proto.core.v1 import group_pb2

Verdict = int
"""A `agentrl.core.v1.Verdict` enum value (protobuf enums are plain ints in Python)."""

CORRECT: Verdict = group_pb2.VERDICT_CORRECT
INCORRECT: Verdict = group_pb2.VERDICT_INCORRECT
PARTIAL: Verdict = group_pb2.VERDICT_PARTIAL
NO_ANSWER: Verdict = group_pb2.VERDICT_NO_ANSWER
FORMAT_ERROR: Verdict = group_pb2.VERDICT_FORMAT_ERROR
VERIFIER_ERROR: Verdict = group_pb2.VERDICT_VERIFIER_ERROR

# Reasons travel in every scored trajectory; keep them short enough to read in a log line.
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class VerifyInput:
    """What a verifier sees: the response, the ground truth and the task metadata."""

    task_type: str
    response_text: str
    ground_truth: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Verification:
    """A verifier's judgement: `score` in [0, 1], the verdict, and a short reason."""

    verdict: Verdict
    score: float
    reason: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verification.score must lie in [0, 1], got {self.score}")

    def __reduce__(self) -> tuple:
        # Crosses the verifier-process boundary on every verification: pickled as a plain
        # constructor call (a third of the dataclass default's cost to load).
        return (Verification, (self.verdict, self.score, self.reason))


def clip_reason(text: str) -> str:
    """`text` on one line, cut to MAX_REASON_CHARS with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 1] + "…"


def preview(text: str, max_chars: int = 40) -> str:
    """A short quoted preview of an answer for reasons: `'\\frac{1}{2}'`, `'abc…'`."""
    line = " ".join(text.split())
    return repr(line if len(line) <= max_chars else line[: max_chars - 1] + "…")


class Verifier(Protocol):
    """Judges one response. Must be thread-safe: the service calls it from many threads."""

    def verify(self, item: VerifyInput, deadline_s: float) -> Verification:
        """Judge `item`, finishing within `deadline_s` seconds (or raising VerifierTimeout)."""
        ...


class VerifierError(Exception):
    """A verification could not be completed (timeout, crash, sandbox down): never a zero."""


class VerifierTimeout(VerifierError):
    """The verification did not finish within its deadline."""
