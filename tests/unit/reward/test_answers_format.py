"""Reading responses: tag structure, final answers, programs, and the format gate."""

from __future__ import annotations

import time

import pytest

from agentrl.reward import answers
from agentrl.reward.format_gate import check_format, verify_format
from agentrl.reward.verifier import CORRECT, FORMAT_ERROR, VerifyInput


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<think>a</think><answer>b</answer>", None),
        ("<think>a<code>x = '</think>'</code></think>\\boxed{1}", None),  # code content is opaque
        ("<result><answer><think></result><answer>1</answer>", None),  # tool output is opaque
        ("<think>a", "<think> is never closed"),
        ("a</answer>", "</answer> without a matching <answer>"),
        ("<think><answer>1</answer></think>", "<answer> opened inside <think>"),
        ("<think><code>x</think></code>", "<think> is never closed"),  # </think> was inside code
        ("<answer>1</answer><answer>1</answer>", "2 <answer> blocks"),
        ("<answer>1</answer>\nThanks!", "text after the final answer"),
        ("\\boxed{1} or maybe \\boxed{2}", "2 different final answers"),
    ],
)
def test_format_problems(text: str, problem: str | None) -> None:
    problems = check_format(text, boxed_answers=True)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("tail", ["", ".", "$.", " \\]", "<|im_end|>", "</s>\n", "$<|endoftext|>"])
def test_punctuation_and_end_markers_may_follow_the_answer(tail: str) -> None:
    assert check_format(f"so $\\boxed{{3}}{tail}", boxed_answers=True) == []
    assert check_format(f"<answer>3</answer>{tail}", boxed_answers=True) == []


def test_format_task_type_needs_exactly_one_answer() -> None:
    assert verify_format(VerifyInput("format", "<answer>x</answer>", "")).verdict == CORRECT
    missing = verify_format(VerifyInput("format", "no answer here", ""))
    assert missing.verdict == FORMAT_ERROR and "no final answer" in missing.reason


def test_final_answer_sources() -> None:
    final = answers.final_answer("<answer>The answer: \\boxed{ 7 }</answer>")
    assert (final.answer, final.source, final.boxed) == ("7", "answer_tag", True)
    final = answers.final_answer("<answer>seven</answer>")
    assert (final.answer, final.boxed) == ("seven", False)
    final = answers.final_answer("\\boxed{\\frac{1}{\\sqrt{2}}} done")
    assert (final.answer, final.trailing.strip()) == ("\\frac{1}{\\sqrt{2}}", "done")
    assert answers.final_answer("nothing").source == "none"


@pytest.mark.parametrize(
    ("text", "program"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\n", "def f():\n    return 1\n"),
        ("```python\nold()\n```\nbetter:\n```py\nnew()\n```", "new()\n"),
        ("```bash\nls\n```", None),
        ("<code>import os</code><result>ok</result> done", None),  # a tool call is not the answer
        ("<answer>\nprint(input())\n</answer>", "print(input())"),
        ("<answer>```python\nx = 1\n```</answer>", "x = 1\n"),
        ("```python\n\n```", None),
    ],
)
def test_extract_program(text: str, program: str | None) -> None:
    assert answers.extract_program(text) == program


@pytest.mark.parametrize(
    "text",
    [
        "`" * 1_000_000,
        "\\boxed{" * 200_000,
        "```x" * 300_000,
        "<answer>" * 200_000,
        "```\n" * 300_001,
    ],
)
def test_pathological_text_is_read_in_linear_time(text: str) -> None:
    start = time.perf_counter()
    check_format(text, boxed_answers=True)
    answers.extract_program(text)
    assert time.perf_counter() - start < 3.0
