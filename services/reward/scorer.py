"""Score requests: validate, verify under a deadline, shape, time, count. No gRPC in here.

`Scorer` owns the verifier worker processes, the verifiers (agentrl.reward.registry) and the
concurrency limit: at most `max_concurrency` verifications run at once, at most `queue_size`
more wait, and beyond that `Overloaded` is raised (the servicer answers RESOURCE_EXHAUSTED).
A batch is admitted whole or not at all.

Every verification ends in a RewardResult: a timeout or crash is `VERDICT_VERIFIER_ERROR` with
the reason, so one bad response never takes the service down or turns into a silent zero. Bad
requests raise `InvalidRequest` naming the field.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from agentrl.common import metrics
from agentrl.common.config import RewardConfig
from agentrl.proto.core.v1 import group_pb2
from agentrl.proto.reward.v1 import reward_pb2
from agentrl.reward import code_tests, qa_verifier, registry, shaping
from agentrl.reward.math_verifier import MATH_PRELOAD
from agentrl.reward.verifier import (
    VERIFIER_ERROR,
    Verification,
    VerifierError,
    VerifierTimeout,
    VerifyInput,
    clip_reason,
)
from agentrl.reward.worker_pool import WorkerPool

log = logging.getLogger(__name__)

# Task types whose ground truth must be given (format needs none; custom verifiers decide).
NEEDS_GROUND_TRUTH = ("math", "code", "qa")
# Threads issuing sandbox calls for code tests, shared by all verifications of the process.
MAX_CODE_TEST_THREADS = 64


class InvalidRequest(ValueError):
    """A malformed request: `field` names what to fix (e.g. `requests[2].task_type`)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class Overloaded(RuntimeError):
    """More requests than `max_concurrency + queue_size`; the caller should back off."""


class Scorer:
    """Turns ScoreRequests into RewardResults; thread-safe; `close()` stops its processes."""

    def __init__(self, config: RewardConfig, sandbox_stub: Any = None) -> None:
        self.config = config
        self._restarts = metrics.counter(
            "reward",
            "verifier_worker_restarts",
            "total",
            "Verifier processes killed and replaced, by reason.",
            ("reason",),
        )
        self._scores = metrics.counter(
            "reward",
            "scores",
            "total",
            "Verifications finished, by task type and verdict.",
            ("task_type", "verdict"),
        )
        self._duration = metrics.histogram(
            "reward", "verify_duration", "seconds", "Time to verify one response.", ("task_type",)
        )
        self._in_flight = metrics.gauge(
            "reward", "in_flight", "requests", "Verifications admitted (running or queued)."
        )
        self.pool = WorkerPool(
            "verifier",
            config.num_verifier_workers,
            MATH_PRELOAD,
            config.verifier_worker_memory_mb,
            on_restart=lambda why: self._restarts.labels(why).inc(),
        )
        self._code_executor = cf.ThreadPoolExecutor(MAX_CODE_TEST_THREADS, "reward-code-test")
        self._executor = cf.ThreadPoolExecutor(config.max_concurrency, "reward-verify")
        self.verifiers = registry.build_verifiers(
            config, self.pool, sandbox_stub, self._code_executor
        )
        self._admitted = 0
        self._lock = threading.Lock()
        self._scores_of = metrics.children(self._scores)
        self._duration_of = metrics.children(self._duration)

    def validate(self, request: reward_pb2.ScoreRequest, prefix: str = "") -> VerifyInput:
        """The request as a VerifyInput; InvalidRequest naming the first bad field."""
        task_type = request.task_type
        if task_type not in self.verifiers:
            known = ", ".join(sorted(self.verifiers))
            raise InvalidRequest(
                f"{prefix}task_type",
                f"{task_type!r} is not a task type; "
                f"one of {known} (custom ones: reward.custom_verifiers)",
            )
        if request.num_tool_calls < 0:
            raise InvalidRequest(
                f"{prefix}num_tool_calls", f"must be >= 0, got {request.num_tool_calls}"
            )
        if request.response_length_tokens < 0:
            raise InvalidRequest(
                f"{prefix}response_length_tokens",
                f"must be >= 0, got {request.response_length_tokens}",
            )
        if task_type in NEEDS_GROUND_TRUTH and not request.ground_truth.strip():
            raise InvalidRequest(f"{prefix}ground_truth", f"required for task_type {task_type}")
        try:
            if task_type == "qa":
                qa_verifier.parse_aliases(request.ground_truth)
            elif task_type == "code":
                code_tests.parse_tests(request.ground_truth, program="")
        except ValueError as exc:
            raise InvalidRequest(f"{prefix}ground_truth", str(exc)) from None
        return VerifyInput(
            task_type, request.response_text, request.ground_truth, dict(request.metadata)
        )

    def score(self, request: reward_pb2.ScoreRequest) -> group_pb2.RewardResult:
        """One result; InvalidRequest for a malformed request, Overloaded when full."""
        return self._run([self.validate(request)], [request])[0]

    def score_batch(
        self, requests: Sequence[reward_pb2.ScoreRequest]
    ) -> list[group_pb2.RewardResult]:
        """Results in request order; validates every request before running any."""
        items = [self.validate(r, f"requests[{i}].") for i, r in enumerate(requests)]
        return self._run(items, requests)

    def _run(
        self, items: list[VerifyInput], requests: Sequence[reward_pb2.ScoreRequest]
    ) -> list[group_pb2.RewardResult]:
        self._admit(len(items))
        try:
            if len(items) == 1:  # one Score: verify in the caller's (gRPC) thread, no hand-off
                return [self._score_one(items[0], requests[0])]
            futures = [
                self._executor.submit(self._score_one, item, request)
                for item, request in zip(items, requests)
            ]
            return [future.result() for future in futures]
        finally:
            self._release(len(items))

    def _admit(self, count: int) -> None:
        limit = self.config.max_concurrency + self.config.queue_size
        with self._lock:
            if self._admitted + count > limit:
                raise Overloaded(
                    f"{self._admitted} verifications admitted; {count} more would pass "
                    f"max_concurrency + queue_size = {limit}; retry later"
                )
            self._admitted += count
        self._in_flight.inc(count)

    def _release(self, count: int) -> None:
        with self._lock:
            self._admitted -= count
        self._in_flight.dec(count)

    def _score_one(
        self, item: VerifyInput, request: reward_pb2.ScoreRequest
    ) -> group_pb2.RewardResult:
        deadline_s = (
            self.config.code.verifier_timeout_s
            if item.task_type == "code"
            else self.config.verifier_timeout_s
        )
        start = time.perf_counter()
        try:
            verification = self.verifiers[item.task_type].verify(item, deadline_s)
        except VerifierTimeout as exc:
            verification = Verification(VERIFIER_ERROR, 0.0, clip_reason(f"timeout: {exc}"))
        except VerifierError as exc:
            verification = Verification(VERIFIER_ERROR, 0.0, clip_reason(f"verifier error: {exc}"))
        except Exception as exc:
            log.exception("verifier crashed", extra={"task_type": item.task_type})
            verification = Verification(
                VERIFIER_ERROR, 0.0, clip_reason(f"verifier crashed: {type(exc).__name__}: {exc}")
            )
        elapsed_s = time.perf_counter() - start
        result = shaping.shape(
            verification,
            self.config,
            request.response_length_tokens,
            request.num_tool_calls,
            request.tools_used,
        )
        result.verify_time_s = elapsed_s
        self._scores_of(item.task_type, group_pb2.Verdict.Name(result.verdict)).inc()
        self._duration_of(item.task_type).observe(elapsed_s)
        return result

    def ready(self) -> bool:
        """True while at least one verifier process is alive."""
        return self.pool.num_alive > 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._code_executor.shutdown(wait=False, cancel_futures=True)
        self.pool.close()
