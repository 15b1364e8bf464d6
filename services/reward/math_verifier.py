"""The `math` verifier: the final answer against the gold answer, compared by math-verify.

The final answer is the last `<answer>` block or `\\boxed{}` (agentrl.reward.answers); answers
written elsewhere in the text ("the answer is 5") do not count. math-verify parses both sides
from LaTeX or plain expressions and compares values: fractions, decimals, percentages, sets,
intervals, equations `x=3` against `3`, symbolic expressions.

math-verify runs in a `WorkerPool` process with its own timeouts off: they use SIGALRM, which
cannot interrupt sympy's C-level arithmetic, and on expiry they quietly return "not equal" (a
silent zero). `verify_math` runs whole in a worker (agentrl.reward.worker_pool); the deadline
kills the worker instead and the verdict says so.
"""

from __future__ import annotations

import logging

from agentrl.reward import answers, format_gate
from agentrl.reward.verifier import (
    CORRECT,
    INCORRECT,
    NO_ANSWER,
    Verification,
    VerifierError,
    VerifyInput,
    clip_reason,
    preview,
)

# Modules a math worker imports once at start (sympy and the ANTLR LaTeX parser: ~1 s).
MATH_PRELOAD = ("math_verify", "latex2sympy2_extended")


def compare_answers(answer: str, gold: str, answer_boxed: bool = True) -> tuple[str, str]:
    """In a worker: ("equal" | "different" | "unparsed_answer" | "unparsed_gold", detail).

    The gold, and an answer taken from a box, are wrapped in `\\boxed{}` so math-verify reads
    each as one LaTeX answer (a plain `1/2` or `0.5` is valid LaTeX too). A free-text answer
    (`<answer>The answer is $\\frac35$</answer>`) is left for math-verify to find the math in.
    """
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = math_verify.parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    if not gold_parsed:
        return "unparsed_gold", f"math-verify cannot parse the ground truth {preview(gold)}"
    answer_text = f"\\boxed{{{answer}}}" if answer_boxed else answer
    answer_parsed = math_verify.parse(answer_text, parsing_timeout=None)
    if not answer_parsed:
        return "unparsed_answer", f"answer {preview(answer)} is not a math expression"
    equal = math_verify.verify(gold_parsed, answer_parsed, timeout_seconds=None)
    relation = "equals" if equal else "differs from"
    return (
        "equal" if equal else "different",
        f"answer {preview(answer)} {relation} gold {preview(gold)}",
    )


def verify_math(item: VerifyInput, apply_gate: bool) -> Verification:
    """In a worker: the format gate (if asked), the final answer, then math-verify."""
    if apply_gate and (failed := format_gate.gate(item, boxed_answers=True)) is not None:
        return failed
    final = answers.final_answer(item.response_text)
    if final.answer is None:
        where = "empty final answer" if final.source != "none" else "no \\boxed{} or <answer>"
        return Verification(NO_ANSWER, 0.0, f"no final answer ({where})")
    outcome, detail = compare_answers(final.answer, item.ground_truth, final.boxed)
    if outcome == "equal":
        return Verification(CORRECT, 1.0, clip_reason(detail))
    if outcome == "unparsed_gold":
        raise VerifierError(detail)
    return Verification(INCORRECT, 0.0, clip_reason(detail))
