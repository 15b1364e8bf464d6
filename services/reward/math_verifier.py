"""The `math` verifier: the final answer against the gold answer, compared by math-verify.

The final answer is the last `<answer>` block or `\\boxed{}` (agentrl.reward.answers); answers
written elsewhere in the text ("the answer is 5") do not count. math-verify parses both sides
from LaTeX or plain expressions and compares values: fractions, decimals, percentages, sets,
intervals, equations `x=3` against `3`, symbolic expressions.

math-verify runs in a `WorkerPool` process with its own timeouts off: they use SIGALRM, which
cannot interrupt sympy's C-level arithmetic, and on expiry they quietly return "not equal" (a
silent zero). The deadline kills the worker instead and the verdict says so.

A verification has two halves. `prepare_math` (the format gate, the final answer, and plain
integers on both sides compared exactly) is linear-time text scanning that cannot hang; the
service runs it in its own process for responses up to `IN_PROCESS_MAX_CHARS`, so a response
without an answer, with a format error, or with an integer answer to an integer gold never
waits for a verifier process. `judge_math` (math-verify, sympy) is the half that can run away
and always runs in a worker (agentrl.reward.worker_pool). `verify_math` is both halves in one
call: what a worker runs for a longer response, and what the tests and the benchmark's direct
baseline call.
"""

from __future__ import annotations

import logging
import re

from agentrl.reward import answers, format_gate
from agentrl.reward.format_gate import format_error
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
# Longest response the service prepares in its own process: gate and answer extraction are
# linear scans that hold the service's GIL (~0.2 ms for 30,000 characters, ~7 us for a short
# answer). Longer responses go whole to a worker, as every response did before.
IN_PROCESS_MAX_CHARS = 32_768
# A plain integer: compared exactly without math-verify (which gives the same verdict: leading
# zeros and -0 equal, any other difference unequal; checked in tests/unit/reward). No `+`, no
# thousands separators, no decimals: those go to math-verify.
_INTEGER_RE = re.compile(r"-?[0-9]{1,18}")

MathComparison = tuple[str, str, bool]
"""What is left for math-verify: (final answer, gold, whether the answer came from a box)."""


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


def compare_integers(answer: str, gold: str) -> tuple[str, str] | None:
    """("equal" | "different", detail) when both sides are plain integers, else None."""
    answer_text, gold_text = answer.strip(), gold.strip()
    if not (_INTEGER_RE.fullmatch(answer_text) and _INTEGER_RE.fullmatch(gold_text)):
        return None
    equal = int(answer_text) == int(gold_text)
    relation = "equals" if equal else "differs from"
    return (
        "equal" if equal else "different",
        f"answer {preview(answer)} {relation} gold {preview(gold)}",
    )


def _verdict(outcome: str, detail: str) -> Verification:
    if outcome == "equal":
        return Verification(CORRECT, 1.0, clip_reason(detail))
    if outcome == "unparsed_gold":
        raise VerifierError(detail)
    return Verification(INCORRECT, 0.0, clip_reason(detail))


def prepare_math(item: VerifyInput, apply_gate: bool) -> Verification | MathComparison:
    """The bounded half: the format gate (if asked), the final answer, integers compared.

    Returns the verdict when one is reached without math-verify, else the comparison to hand
    to `judge_math`. Linear-time scans only: safe to run outside a worker.
    """
    scan = answers.scan_tags(item.response_text)
    final = answers.final_answer(item.response_text, scan)
    if apply_gate and (problems := format_gate.problems_of(scan, final)):
        return format_error(problems)
    if final.answer is None:
        where = "empty final answer" if final.source != "none" else "no \\boxed{} or <answer>"
        return Verification(NO_ANSWER, 0.0, f"no final answer ({where})")
    if (integers := compare_integers(final.answer, item.ground_truth)) is not None:
        return _verdict(*integers)
    return final.answer, item.ground_truth, final.boxed


def judge_math(answer: str, gold: str, answer_boxed: bool) -> Verification:
    """In a worker: math-verify's verdict on a comparison from `prepare_math`."""
    return _verdict(*compare_answers(answer, gold, answer_boxed))


def verify_math(item: VerifyInput, apply_gate: bool) -> Verification:
    """Both halves: `prepare_math`, then `judge_math` when math-verify must decide."""
    prepared = prepare_math(item, apply_gate)
    if isinstance(prepared, Verification):
        return prepared
    return judge_math(*prepared)
