"""The format gate and the `format` verifier: well-formed tags, one final answer, nothing after it.

The gate runs before the correctness verifier for the task types the recipe lists
(`reward.format_gate_task_types`); a response that fails it gets `VERDICT_FORMAT_ERROR` and the
format penalty instead of a correctness reward, so the policy cannot earn credit with a broken
structure. Rules, each reported by name in the reason:

1. tags are balanced and properly nested; `<think>` and `<answer>` only at the top level
   (tool blocks are opaque, see agentrl.reward.answers);
2. at most one `<answer>` block;
3. one final answer: for math, the boxes of the final answer must not hold different values
   (hedging with `\\boxed{3} or \\boxed{4}` is a format error);
4. nothing after the final answer except whitespace, punctuation, closing `$`/`\\]` and
   chat-template end markers.

Not covered: two boxes with equal values written differently (`\\frac12`, `0.5`) count as two
answers; the gate compares text, not values.
"""

from __future__ import annotations

import re

from agentrl.reward import answers
from agentrl.reward.verifier import (
    CORRECT,
    FORMAT_ERROR,
    Verification,
    VerifyInput,
    clip_reason,
    preview,
)

# Trailing text after the final answer is allowed when it has no letter or digit: `$.`, `\]`.
_SUBSTANTIVE_RE = re.compile(r"[^\W_]")


def check_format(text: str, boxed_answers: bool, require_answer: bool = False) -> list[str]:
    """Every format problem of `text` (empty when the format is good).

    boxed_answers: the task answers in `\\boxed{}` (math): hedged boxes are a problem.
    require_answer: a response without a final answer is a problem (the `format` task type).
    """
    scan = answers.scan_tags(text)
    final = answers.final_answer(text, scan, use_boxed=boxed_answers)
    return problems_of(scan, final, require_answer)


def problems_of(
    scan: answers.TagScan, final: answers.FinalAnswer, require_answer: bool = False
) -> list[str]:
    """`check_format` on a response already scanned (`final` read with the same `scan`)."""
    problems = list(scan.problems)
    num_answer_blocks = len(scan.named("answer"))
    if num_answer_blocks > 1:
        problems.append(f"{num_answer_blocks} <answer> blocks (one allowed)")
    if len(final.candidates) > 1:
        shown = ", ".join(preview(c, 20) for c in final.candidates[-3:])
        problems.append(f"{len(final.candidates)} different final answers ({shown})")
    if final.source != "none" and _SUBSTANTIVE_RE.search(final.trailing):
        problems.append(f"text after the final answer: {preview(final.trailing)}")
    if require_answer and final.answer is None:
        problems.append("no final answer (<answer>...</answer> or \\boxed{...})")
    return problems


def format_error(problems: list[str]) -> Verification:
    return Verification(FORMAT_ERROR, 0.0, clip_reason("format: " + "; ".join(problems)))


def gate(item: VerifyInput, boxed_answers: bool) -> Verification | None:
    """A FORMAT_ERROR verification when `item` fails the gate, else None."""
    problems = check_format(item.response_text, boxed_answers=boxed_answers)
    return format_error(problems) if problems else None


def verify_format(item: VerifyInput, apply_gate: bool = True) -> Verification:
    """The `format` task type: CORRECT when the gate passes and there is one final answer."""
    problems = check_format(item.response_text, boxed_answers=True, require_answer=True)
    if problems:
        return Verification(FORMAT_ERROR, 0.0, clip_reason("format: " + "; ".join(problems)))
    return Verification(CORRECT, 1.0, "format ok")
