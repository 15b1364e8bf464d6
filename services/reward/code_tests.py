"""Unit tests of a code task: parse them from the ground truth, wrap them for the sandbox, judge.

Ground truth (JSON), one of:
- assert-style: `{"asserts": ["assert add(1, 2) == 3", ...], "setup": "import math"}`; MBPP's
  `test_list` / `test_setup_code` keys work too. Each assert is one test.
- HumanEval-style: `{"test": "def check(candidate): ...", "entry_point": "add"}`: one test.
- call-based (APPS/TACO): `{"fn_name": "add", "inputs": [[1, 2], ...], "outputs": [3, ...]}`;
  a LeetCode `class Solution` method of that name works too.
- stdin/stdout: `{"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}` or a list of
  `{"input": ..., "output": ...}` objects (LiveCodeBench). Outputs match after trailing
  whitespace is dropped from each line, or else token by token.

Each test runs as its own sandbox execution, so a test that hangs costs only itself. For assert,
HumanEval and call-based tests the program runs as module `solution` (its `__main__` block does
not run) followed by the test, and then prints a random marker: a test passes only when the
execution exits 0 *and* the marker is printed, so a program that calls `sys.exit(0)` or
`os._exit(0)` before the tests cannot pass them.

Not covered: a program written to read the harness's own source and print the marker itself
(the marker is in the script the sandbox runs); output comparison with float tolerance.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CodeTest:
    """One sandbox execution: `code` run with `stdin`; `marker` or `expected_stdout` judges it."""

    label: str
    code: str
    stdin: str = ""
    marker: str | None = None
    expected_stdout: str | None = None


def _harness(program: str, test_code: str, label: str) -> CodeTest:
    marker = f"AGENTRL-TEST-PASSED-{secrets.token_hex(8)}"
    code = (
        "import sys\n"
        f"_ns = {{'__name__': 'solution'}}\n"
        f"exec(compile({program!r}, 'solution.py', 'exec'), _ns)\n"
        f"exec(compile({test_code!r}, 'test.py', 'exec'), _ns)\n"
        "sys.stdout.flush()\n"
        f"print('\\n' + {marker!r})\n"
    )
    return CodeTest(label=label, code=code, marker=marker)


def _call_test(fn_name: str, args: Any, expected: Any) -> str:
    """Test code calling `fn_name(*args)` (or `Solution().fn_name`), compared with `expected`."""
    return (
        f"_f = Solution().{fn_name} if 'Solution' in globals() else {fn_name}\n"
        f"_args = json.loads({json.dumps(args)!r})\n"
        f"_want = json.loads({json.dumps(expected)!r})\n"
        "_got = _f(*_args) if isinstance(_args, list) else _f(_args)\n"
        "if isinstance(_got, tuple): _got = list(_got)\n"
        "assert _got == _want or [_got] == _want, f'returned {_got!r}, expected {_want!r}'\n"
    )


def parse_tests(ground_truth: str, program: str) -> list[CodeTest]:
    """The tests of `ground_truth` wrapped around `program`; ValueError saying what to fix."""
    try:
        spec = json.loads(ground_truth)
    except json.JSONDecodeError as exc:
        raise ValueError(f"ground_truth for code must be JSON describing tests: {exc}") from None
    if isinstance(spec, list):
        spec = {"cases": spec}
    if not isinstance(spec, dict):
        message = "ground_truth for code must be a JSON object or list of cases"
        raise ValueError(message)  # noqa: TRY004 - bad input data, not a programming error
    asserts = spec.get("asserts", spec.get("test_list"))
    if asserts is not None:
        setup = spec.get("setup", spec.get("test_setup_code", "")) or ""
        if not isinstance(asserts, list) or not all(isinstance(a, str) for a in asserts):
            raise ValueError("ground_truth 'asserts' must be a list of strings")
        return [
            _harness(program, f"{setup}\n{a}", f"assert #{i + 1}") for i, a in enumerate(asserts)
        ]
    if "test" in spec:
        entry = spec.get("entry_point")
        if not isinstance(spec["test"], str) or not isinstance(entry, str):
            raise ValueError("ground_truth HumanEval style needs string 'test' and 'entry_point'")
        return [_harness(program, f"{spec['test']}\ncheck({entry})", "check()")]
    cases = spec.get("cases")
    if cases is None and "inputs" in spec:
        inputs, outputs = spec["inputs"], spec.get("outputs")
        if (
            not isinstance(inputs, list)
            or not isinstance(outputs, list)
            or len(inputs) != len(outputs)
        ):
            raise ValueError("ground_truth 'inputs' and 'outputs' must be lists of equal length")
        if spec.get("fn_name"):
            fn = str(spec["fn_name"])
            if not fn.isidentifier():
                raise ValueError(f"ground_truth 'fn_name' {fn!r} is not a Python identifier")
            return [
                _harness(program, "import json\n" + _call_test(fn, args, want), f"call #{i + 1}")
                for i, (args, want) in enumerate(zip(inputs, outputs))
            ]
        cases = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
    if not isinstance(cases, list) or not cases:
        raise ValueError(
            "ground_truth for code has no tests: give 'asserts', 'test', "
            "'inputs'/'outputs' or a list of {input, output} cases"
        )
    tests = []
    for i, case in enumerate(cases):
        if (
            not isinstance(case, dict)
            or not isinstance(case.get("input"), str)
            or not isinstance(case.get("output"), str)
        ):
            message = f"ground_truth case #{i + 1} needs string 'input' and 'output'"
            raise ValueError(message)  # noqa: TRY004 - bad input data
        tests.append(
            CodeTest(
                label=f"stdin case #{i + 1}",
                code=program,
                stdin=case["input"],
                expected_stdout=case["output"],
            )
        )
    return tests


def outputs_match(actual: str, expected: str) -> bool:
    """Equal after dropping trailing whitespace per line and trailing blank lines, or token-wise."""

    def lines(text: str) -> list[str]:
        rows = [row.rstrip() for row in text.replace("\r\n", "\n").split("\n")]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    return lines(actual) == lines(expected) or actual.split() == expected.split()


def marker_printed(stdout: str, marker: str) -> bool:
    """Whether the harness reached its end: the last non-empty stdout line is the marker."""
    rows = [row for row in stdout.splitlines() if row.strip()]
    return bool(rows) and rows[-1].strip() == marker
