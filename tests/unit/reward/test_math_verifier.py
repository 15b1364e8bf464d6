"""The math verifier over a table of responses: equal values in other forms, near misses, no
answer, two answers, answers outside the box. Runs `verify_math` (the function a verifier process
runs) in this process with the real math-verify; then the cases the service answers without a
verifier process (integers compared exactly, no answer, format errors) against math-verify."""

from __future__ import annotations

import pytest

from agentrl.reward.math_verifier import (
    IN_PROCESS_MAX_CHARS,
    compare_answers,
    compare_integers,
    verify_math,
)
from agentrl.reward.registry import MathVerifier
from agentrl.reward.verifier import (
    CORRECT,
    FORMAT_ERROR,
    INCORRECT,
    NO_ANSWER,
    VerifierError,
    VerifyInput,
)

# (response, gold, expected verdict)
EQUAL_FORMS = [
    (r"So $\boxed{\frac{1}{2}}$.", "1/2", CORRECT),
    (r"\boxed{0.5}", r"\frac{1}{2}", CORRECT),
    (r"\boxed{\dfrac{1}{2}}", "0.5", CORRECT),
    (r"\boxed{\frac12}", "0.5", CORRECT),
    (r"\boxed{50\%}", "0.5", CORRECT),
    (r"\boxed{3.0}", "3", CORRECT),
    (r"\boxed{x=3}", "3", CORRECT),
    (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}", CORRECT),
    (r"\boxed{(0,1]}", "(0, 1]", CORRECT),
    (r"\boxed{\{2,1\}}", r"\{1,2\}", CORRECT),
    (r"\boxed{1,000}", "1000", CORRECT),
    (r"\boxed{(x+1)^2}", "x^2+2x+1", CORRECT),
    (r"\boxed{-\frac{3}{4}}", "-0.75", CORRECT),
    (r"\boxed{\pi/2}", r"\frac{\pi}{2}", CORRECT),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", CORRECT),
    (r"\boxed{(-\infty, 3)}", r"(-\infty,3)", CORRECT),
    ("<answer>42</answer>", "42", CORRECT),
    (r"<answer>The answer is $\frac{3}{5}$</answer>", "0.6", CORRECT),
    (r"<answer>\boxed{7}</answer>", "7", CORRECT),
    (r"<think>maybe \boxed{5}</think> Final: \boxed{6}", "6", CORRECT),
    (r"<code>print(99)</code><result>\boxed{99}</result> so \boxed{4}", "4", CORRECT),
    (r"\boxed{10^{3}}", "1000", CORRECT),
    (r"\boxed{2^{10}}", "1024", CORRECT),
    (r"\boxed{\frac{6}{8}}", r"\frac{3}{4}", CORRECT),
    (r"\boxed{1.5}", r"\frac{3}{2}", CORRECT),
    (r"$\boxed{12}$.", "12", CORRECT),
    (r"\boxed{3}<|im_end|>", "3", CORRECT),
    (r"\boxed{\infty}", r"\infty", CORRECT),
    (r"\boxed{x^2 - 1}", "(x-1)(x+1)", CORRECT),
    (r"\boxed{\frac{1}{3}}", "0.333333", CORRECT),
    (r"It is \boxed{3}, so again \boxed{3}.", "3", CORRECT),
    (r"\fbox{8}", "8", CORRECT),
]
NEAR_MISSES = [
    (r"\boxed{0.51}", "1/2", INCORRECT),
    (r"\boxed{(0,1)}", "(0,1]", INCORRECT),
    (r"\boxed{[0,1]}", "(0,1]", INCORRECT),
    (r"\boxed{\{1,2,3\}}", r"\{1,2\}", INCORRECT),
    (r"\boxed{-3}", "3", INCORRECT),
    (r"\boxed{\frac{2}{1}}", "1/2", INCORRECT),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}", INCORRECT),
    (r"\boxed{x^2+2x}", "x^2+2x+1", INCORRECT),
    (r"\boxed{3.14}", r"\pi", INCORRECT),
    (r"\boxed{1001}", "1000", INCORRECT),
    (r"\boxed{2^{11}}", "1024", INCORRECT),
    ("<answer>41</answer>", "42", INCORRECT),
    (r"\boxed{\frac{1}{4}}", "0.2", INCORRECT),
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3)", INCORRECT),
    (r"\boxed{\text{two}}", "2", INCORRECT),
    (r"\boxed{0.3333}", r"\frac{1}{3}", INCORRECT),
]
NO_ANSWERS = [
    ("The answer is 5.", "5", NO_ANSWER),
    ("", "5", NO_ANSWER),
    (r"\boxed{}", "5", NO_ANSWER),
    (r"I think it is $\frac12$", "1/2", NO_ANSWER),
    (r"<think>\boxed{5}</think> The answer is 5", "5", NO_ANSWER),
    (r"<code>print(5)</code><result>\boxed{5}</result> so five", "5", NO_ANSWER),
    (r"so \boxed{5", "5", NO_ANSWER),
    ("<answer> </answer>", "5", NO_ANSWER),
]
TWO_ANSWERS = [
    (r"\boxed{3} or \boxed{4}", "3", FORMAT_ERROR),
    ("<answer>3</answer> <answer>4</answer>", "4", FORMAT_ERROR),
    (r"<answer>\boxed{1} \boxed{2}</answer>", "1", FORMAT_ERROR),
    (r"first guess \boxed{5}, final \boxed{6}", "6", FORMAT_ERROR),
]
OUTSIDE_THE_BOX = [
    ("<answer>5</answer> but actually 6", "5", FORMAT_ERROR),
    (r"\boxed{5}. Actually I think it is 6.", "5", FORMAT_ERROR),
    (r"<think> unfinished \boxed{5}", "5", FORMAT_ERROR),
    ("<answer>5", "5", FORMAT_ERROR),
    (r"</think> \boxed{5}", "5", FORMAT_ERROR),
]
TABLE = EQUAL_FORMS + NEAR_MISSES + NO_ANSWERS + TWO_ANSWERS + OUTSIDE_THE_BOX


def test_table_is_large_enough_and_covers_every_verdict() -> None:
    assert len(TABLE) >= 60
    assert {verdict for _, _, verdict in TABLE} == {CORRECT, INCORRECT, NO_ANSWER, FORMAT_ERROR}


@pytest.mark.parametrize(("response", "gold", "expected"), TABLE)
def test_math_verdicts(response: str, gold: str, expected: int) -> None:
    result = verify_math(VerifyInput("math", response, gold), apply_gate=True)
    assert result.verdict == expected, result.reason
    assert result.score == (1.0 if expected == CORRECT else 0.0)
    assert result.reason


def test_without_the_gate_the_last_answer_counts() -> None:
    item = VerifyInput("math", r"\boxed{3} or \boxed{4}", "4")
    assert verify_math(item, apply_gate=False).verdict == CORRECT
    assert verify_math(item, apply_gate=True).verdict == FORMAT_ERROR


def test_reason_names_both_sides() -> None:
    result = verify_math(VerifyInput("math", r"\boxed{0.51}", "1/2"), apply_gate=True)
    assert "0.51" in result.reason and "1/2" in result.reason and "differs" in result.reason


def test_unparseable_gold_is_a_verifier_error_not_a_wrong_answer() -> None:
    with pytest.raises(VerifierError, match="ground truth"):
        verify_math(VerifyInput("math", r"\boxed{3}", "}{"), apply_gate=True)


# Integer pairs the service compares itself; math-verify must give the same verdict on each.
INTEGER_PAIRS = [
    ("42", "42"),
    ("42", "41"),
    ("007", "7"),
    ("-0", "0"),
    ("-3", "3"),
    ("3", "-3"),
    ("1000000000000001", "1000000000000000"),
    ("123456789012345678", "123456789012345678"),
    ("123456789012345678", "123456789012345679"),
    (" 12 ", "12"),
]


@pytest.mark.parametrize(("answer", "gold"), INTEGER_PAIRS)
@pytest.mark.parametrize("boxed", [True, False])
def test_integer_shortcut_agrees_with_math_verify(answer: str, gold: str, boxed: bool) -> None:
    shortcut = compare_integers(answer, gold)
    assert shortcut is not None
    assert shortcut == compare_answers(answer, gold, boxed)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [("+5", "5"), ("1,000", "1000"), ("5.0", "5"), ("1e3", "1000"), ("5", "x"), ("1" * 19, "1")],
)
def test_integer_shortcut_leaves_other_forms_to_math_verify(answer: str, gold: str) -> None:
    assert compare_integers(answer, gold) is None


class _NoWorkers:
    """A pool that refuses every call: what MathVerifier answers without one ran in-process."""

    def call(self, function, args, deadline_s):
        raise VerifierError(f"no worker for {function.__name__}")


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"\boxed{42}", "42", CORRECT),
        ("<answer>41</answer>", "42", INCORRECT),
        ("The answer is 5.", "5", NO_ANSWER),
        (r"\boxed{3} or \boxed{4}", "3", FORMAT_ERROR),
    ],
)
def test_bounded_cases_are_answered_without_a_worker(
    response: str, gold: str, expected: int
) -> None:
    verifier = MathVerifier(_NoWorkers(), apply_gate=True)
    item = VerifyInput("math", response, gold)
    result = verifier.verify(item, deadline_s=10)
    assert result == verify_math(item, apply_gate=True)
    assert result.verdict == expected


def test_sympy_and_long_responses_go_to_a_worker() -> None:
    verifier = MathVerifier(_NoWorkers(), apply_gate=True)
    with pytest.raises(VerifierError, match="judge_math"):
        verifier.verify(VerifyInput("math", r"\boxed{\frac{1}{2}}", "0.5"), deadline_s=10)
    long = "x" * IN_PROCESS_MAX_CHARS + r" \boxed{42}"
    with pytest.raises(VerifierError, match="verify_math"):
        verifier.verify(VerifyInput("math", long, "42"), deadline_s=10)
