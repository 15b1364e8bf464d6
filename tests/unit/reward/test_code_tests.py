"""Parsing code-task ground truth into sandbox executions, and judging their output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentrl.reward.code_tests import marker_printed, outputs_match, parse_tests


def test_assert_style_and_mbpp_keys() -> None:
    tests = parse_tests(
        json.dumps({"asserts": ["assert f(1) == 2", "assert f(2) == 3"], "setup": "import math"}),
        "def f(x): return x + 1",
    )
    assert [t.label for t in tests] == ["assert #1", "assert #2"]
    assert all(t.marker and t.marker in t.code and t.expected_stdout is None for t in tests)
    assert tests[0].marker != tests[1].marker  # a fresh marker per execution
    mbpp = parse_tests(json.dumps({"test_list": ["assert f(1) == 2"], "test_setup_code": ""}), "")
    assert len(mbpp) == 1


def test_stdio_forms() -> None:
    apps = parse_tests(json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}), "P")
    lcb = parse_tests(json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]), "P")
    assert [(t.code, t.stdin, t.expected_stdout) for t in apps] == [
        ("P", "1 2\n", "3\n"),
        ("P", "3 4\n", "7\n"),
    ]
    assert lcb[0].stdin == "1 2\n" and lcb[0].marker is None


@pytest.mark.parametrize(
    ("ground_truth", "message"),
    [
        ("not json", "must be JSON"),
        ("42", "JSON object or list"),
        ('{"asserts": "assert 1"}', "list of strings"),
        ('{"inputs": ["1"], "outputs": []}', "equal length"),
        ('{"fn_name": "f(", "inputs": [[1]], "outputs": [1]}', "not a Python identifier"),
        ("{}", "no tests"),
        ('[{"input": 1, "output": "2"}]', "case #1"),
    ],
)
def test_bad_ground_truth(ground_truth: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tests(ground_truth, "")


def _run(code: str) -> subprocess.CompletedProcess:
    # Trusted harness text with trusted programs, to check the harness logic itself.
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("program", "passes"),
    [
        ("def add(a, b):\n    return a + b\n", True),
        ("def add(a, b):\n    return a - b\n", False),
        ("import sys\nsys.exit(0)\ndef add(a, b): return a + b\n", False),
        ("import os\nos._exit(0)\n", False),
        ("def add(a, b): return a + b\nif __name__ == '__main__':\n    input()\n", True),
    ],
)
def test_harness_passes_only_when_the_test_ran(program: str, passes: bool) -> None:
    test = parse_tests(json.dumps({"asserts": ["assert add(2, 3) == 5"]}), program)[0]
    done = _run(test.code)
    assert (done.returncode == 0 and marker_printed(done.stdout, test.marker)) is passes


@pytest.mark.parametrize(
    ("program", "output", "passes"),
    [
        ("def add(a, b): return a + b", 5, True),
        ("class Solution:\n    def add(self, a, b): return a + b", 5, True),
        ("def add(a, b): return a + b", [5], True),  # APPS wraps some outputs in a list
        ("def add(a, b): return (a + b, 0)", [5, 0], True),  # tuples compare as lists (JSON)
        ("def add(a, b): return a * b", 5, False),
    ],
)
def test_call_based_tests(program: str, output: object, passes: bool) -> None:
    spec = {"fn_name": "add", "inputs": [[2, 3]], "outputs": [output]}
    test = parse_tests(json.dumps(spec), program)[0]
    done = _run(test.code)
    assert (done.returncode == 0 and marker_printed(done.stdout, test.marker)) is passes


@pytest.mark.parametrize(
    ("actual", "expected", "match"),
    [
        ("3\n", "3", True),
        ("3   \r\n\n\n", "3\n", True),
        ("1 2\n3\n", "1 2 3", True),  # token-wise
        ("3\n", "4\n", False),
        ("", "0", False),
    ],
)
def test_outputs_match(actual: str, expected: str, match: bool) -> None:
    assert outputs_match(actual, expected) is match


def test_marker_must_be_the_last_line() -> None:
    assert marker_printed("out\nMARK\n\n", "MARK")
    assert not marker_printed("MARK\nmore output\n", "MARK")
