"""The `code` verifier: the final program against the task's unit tests, run by the sandbox.

Nothing model-written ever runs in the reward process: every test is one
`agentrl.sandbox.v1.SandboxService.Execute` call (tests and harness: agentrl.reward.code_tests).
Its settings are `reward.code` (`CodeVerifierConfig`), taken whole. Up to
`max_parallel_tests` tests of one response run at once. Scores, by `reward_mode`: `all_pass` (1
when every test passes, else 0; stops at the first failure), `pass_fraction` (passed / run) or
`pass_fraction_pow` (that fraction to the power `pass_power`, which favours nearly-complete
solutions).

A test the *program* fails (wrong output, exception, timeout, memory, output flood) is a failed
test. A failure of the *sandbox* (unreachable, `sandbox_error`, `rejected`) raises
VerifierError: the verdict is `verifier_error`, never a silent zero.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass

import grpc

from agentrl.common.config import CodeVerifierConfig
from agentrl.proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from agentrl.reward import answers, code_tests, format_gate
from agentrl.reward.verifier import (
    CORRECT,
    INCORRECT,
    NO_ANSWER,
    PARTIAL,
    Verification,
    VerifierError,
    VerifierTimeout,
    VerifyInput,
    clip_reason,
)
from agentrl.reward.worker_pool import WorkerPool

# Extra time a test's RPC gets beyond the program's own limit: sandbox start-up and transfer.
RPC_MARGIN_S = 5.0
# A full sandbox answers RESOURCE_EXHAUSTED; back off from 0.2 s, doubling up to 2 s, and retry
# while the verification's deadline allows.
OVERLOAD_FIRST_BACKOFF_S = 0.2
OVERLOAD_MAX_BACKOFF_S = 2.0
_STATUS = sandbox_pb2.ExecutionStatus


@dataclass(frozen=True)
class TestOutcome:
    """How one test ended: passed, or why not."""

    passed: bool
    why: str = ""


def prepare_code(
    item: VerifyInput, apply_gate: bool, max_tests: int
) -> Verification | tuple[list[code_tests.CodeTest], int]:
    """In a worker: the format gate, the program and its tests (at most `max_tests`).

    Returns a final Verification (format error, no program) or the tests and how many were cut.
    """
    if apply_gate and (failed := format_gate.gate(item, boxed_answers=False)) is not None:
        return failed
    program = answers.extract_program(item.response_text)
    if program is None:
        return Verification(NO_ANSWER, 0.0, "no program (no ```python block in the final answer)")
    tests = code_tests.parse_tests(item.ground_truth, program)
    return tests[:max_tests], max(len(tests) - max_tests, 0)


class CodeVerifier:
    """Prepares in `pool`, runs tests through a SandboxService stub; thread-safe."""

    def __init__(
        self,
        pool: WorkerPool,
        stub: sandbox_pb2_grpc.SandboxServiceStub,
        settings: CodeVerifierConfig,
        executor: cf.ThreadPoolExecutor,
        apply_gate: bool,
    ) -> None:
        self.pool = pool
        self.stub = stub
        self.settings = settings
        self.executor = executor
        self.apply_gate = apply_gate

    def verify(self, item: VerifyInput, deadline_s: float) -> Verification:
        deadline = time.monotonic() + deadline_s
        prepared = self.pool.call(
            prepare_code, (item, self.apply_gate, self.settings.max_tests), deadline_s
        )
        if isinstance(prepared, Verification):
            return prepared
        tests, skipped = prepared
        outcomes = self._run(tests, deadline, deadline_s)
        return self._judge(tests, outcomes, skipped)

    def _run(
        self, tests: list[code_tests.CodeTest], deadline: float, deadline_s: float
    ) -> dict[int, TestOutcome]:
        """Run tests in a sliding window; in all_pass mode stop launching after a failure."""
        early_stop = self.settings.reward_mode == "all_pass"
        todo = iter(enumerate(tests))
        pending: set[cf.Future] = set()
        outcomes: dict[int, TestOutcome] = {}
        failed = False
        while True:
            while not (early_stop and failed) and len(pending) < self.settings.max_parallel_tests:
                nxt = next(todo, None)
                if nxt is None:
                    break
                pending.add(self.executor.submit(self._run_one, nxt[0], nxt[1], deadline))
            if not pending:
                return outcomes
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise VerifierTimeout(
                    f"code tests did not finish within {deadline_s:g} s "
                    f"({len(outcomes)}/{len(tests)} done)"
                )
            done, pending = cf.wait(pending, timeout=remaining_s, return_when=cf.FIRST_COMPLETED)
            for future in done:
                index, outcome = future.result()
                outcomes[index] = outcome
                failed = failed or not outcome.passed
            if early_stop and failed:
                return outcomes  # tests still running finish in the background, unread

    def _run_one(
        self, index: int, test: code_tests.CodeTest, deadline: float
    ) -> tuple[int, TestOutcome]:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise VerifierTimeout("code verification deadline passed before the test started")
        request = sandbox_pb2.ExecuteRequest(
            code=test.code,
            language="python",
            stdin=test.stdin.encode(),
            timeout_s=self.settings.test_timeout_s,
            memory_mb=self.settings.memory_mb,
        )
        backoff_s = OVERLOAD_FIRST_BACKOFF_S
        while True:
            remaining_s = deadline - time.monotonic()
            try:
                response = self.stub.Execute(
                    request,
                    timeout=max(
                        min(remaining_s, self.settings.test_timeout_s + RPC_MARGIN_S), 0.001
                    ),
                )
                break
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    and time.monotonic() + backoff_s < deadline
                ):
                    time.sleep(backoff_s)  # the sandbox is full: wait, within our deadline
                    backoff_s = min(backoff_s * 2, OVERLOAD_MAX_BACKOFF_S)
                    continue
                name = code.name if code is not None else "error"
                details = exc.details() if hasattr(exc, "details") else str(exc)
                raise VerifierError(
                    f"sandbox call failed for {test.label}: {name}: {details}"
                ) from None
        return index, self._outcome(test, response)

    def _outcome(
        self, test: code_tests.CodeTest, response: sandbox_pb2.ExecuteResponse
    ) -> TestOutcome:
        status = response.status
        if status in (
            _STATUS.EXECUTION_STATUS_SANDBOX_ERROR,
            _STATUS.EXECUTION_STATUS_REJECTED,
            _STATUS.EXECUTION_STATUS_UNSPECIFIED,
        ):
            raise VerifierError(
                f"sandbox could not run {test.label}: "
                f"{_STATUS.Name(status)} {response.message}".strip()
            )
        if status == _STATUS.EXECUTION_STATUS_TIMEOUT:
            return TestOutcome(
                False, f"{test.label} timed out after {self.settings.test_timeout_s:g} s"
            )
        if status == _STATUS.EXECUTION_STATUS_OOM:
            return TestOutcome(False, f"{test.label} ran out of memory")
        if status == _STATUS.EXECUTION_STATUS_OUTPUT_LIMIT:
            return TestOutcome(False, f"{test.label} printed past the output limit")
        if status == _STATUS.EXECUTION_STATUS_ERROR:
            last = (response.stderr.strip().splitlines() or [f"exit code {response.exit_code}"])[-1]
            return TestOutcome(False, f"{test.label} failed: {last}")
        if test.marker is not None and not code_tests.marker_printed(response.stdout, test.marker):
            return TestOutcome(False, f"{test.label}: program exited before the test ran")
        if test.expected_stdout is not None and not code_tests.outputs_match(
            response.stdout, test.expected_stdout
        ):
            return TestOutcome(False, f"{test.label}: wrong output")
        return TestOutcome(True)

    def _judge(
        self, tests: list[code_tests.CodeTest], outcomes: dict[int, TestOutcome], skipped: int
    ) -> Verification:
        num_passed = sum(o.passed for o in outcomes.values())
        fraction = num_passed / len(tests)
        mode = self.settings.reward_mode
        score = (
            float(num_passed == len(tests))
            if mode == "all_pass"
            else fraction
            if mode == "pass_fraction"
            else fraction**self.settings.pass_power
        )
        first_failure = next(
            (outcomes[i].why for i in sorted(outcomes) if not outcomes[i].passed), ""
        )
        if mode == "all_pass" and first_failure:
            summary = f"{first_failure} ({num_passed} of {len(outcomes)} run passed; stopped)"
        else:
            summary = f"{num_passed}/{len(tests)} tests passed" + (
                f"; {first_failure}" if first_failure else ""
            )
        if skipped:
            summary += f"; {skipped} tests beyond reward.code.max_tests not run"
        verdict = CORRECT if score == 1.0 else INCORRECT if score == 0.0 else PARTIAL
        return Verification(verdict, score, clip_reason(summary))
