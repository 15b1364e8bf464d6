"""The worker pool really stops slow or crashing calls and replaces the worker."""

from __future__ import annotations

import os
import pickle
import time

import pytest

from agentrl.reward.math_verifier import MATH_PRELOAD, verify_math
from agentrl.reward.verifier import (
    INCORRECT,
    Verification,
    VerifierError,
    VerifierTimeout,
    VerifyInput,
)
from agentrl.reward.worker_pool import WorkerPool


@pytest.fixture
def pool():
    pool = WorkerPool("test", num_workers=1)
    yield pool
    pool.close()


def test_timeout_kills_and_replaces_the_worker(pool: WorkerPool) -> None:
    start = time.monotonic()
    with pytest.raises(VerifierTimeout, match="within 0.5 s; worker replaced"):
        pool.call(time.sleep, (60,), deadline_s=0.5)
    assert time.monotonic() - start < 3.0
    assert pool.call(abs, (-3,), deadline_s=30) == 3  # the replacement answers


def test_crash_and_exceptions(pool: WorkerPool) -> None:
    with pytest.raises(VerifierError, match="died"):
        pool.call(os._exit, (3,), deadline_s=30)
    with pytest.raises(ValueError, match="invalid literal"):
        pool.call(int, ("x",), deadline_s=30)
    with pytest.raises(VerifierError, match="ZeroDivisionError"):
        pool.call(divmod, (1, 0), deadline_s=30)
    assert pool.call(abs, (-2,), deadline_s=30) == 2


def test_arguments_that_cannot_be_sent_leave_the_worker_free(pool: WorkerPool) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.call(abs, (lambda: 1,), deadline_s=30)
    assert pool.call(abs, (-4,), deadline_s=5) == 4  # the only worker went back to the pool


def test_a_verification_comes_back_whole(pool: WorkerPool) -> None:
    sent = Verification(INCORRECT, 0.0, "answer '3' differs from gold '4'")
    assert pool.call(Verification, (sent.verdict, sent.score, sent.reason), 30) == sent


def test_large_messages_cross_in_both_directions(pool: WorkerPool) -> None:
    text = "x" * 3_000_000  # beyond any socket buffer: several reads each way
    assert pool.call(str.upper, (text,), deadline_s=30) == text.upper()


def test_busy_pool_times_out_waiting() -> None:
    pool = WorkerPool("busy", num_workers=1)
    try:
        import threading

        blocker = threading.Thread(target=lambda: pool.call(time.sleep, (2,), 30))
        blocker.start()
        time.sleep(0.2)
        with pytest.raises(VerifierTimeout, match="no busy worker free"):
            pool.call(abs, (1,), deadline_s=0.3)
        blocker.join()
    finally:
        pool.close()


@pytest.mark.slow
def test_pathological_math_is_stopped_at_the_deadline() -> None:
    pool = WorkerPool("math", num_workers=1, preload=MATH_PRELOAD)
    try:
        # sympy evaluates 9^(9^(9^9)) in C big-integer code: only killing the process stops it.
        item = VerifyInput("math", r"\boxed{9^{9^{9^{9}}}}", "3")
        start = time.monotonic()
        with pytest.raises(VerifierTimeout):
            pool.call(verify_math, (item, True), deadline_s=2.0)
        assert time.monotonic() - start < 4.0
        ok = pool.call(verify_math, (VerifyInput("math", r"\boxed{3}", "3"), True), 30)
        assert ok.score == 1.0
    finally:
        pool.close()
