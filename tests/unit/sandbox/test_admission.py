"""Admission: concurrency limit, bounded queue, immediate refusal with a hint, drain."""

import threading
import time

import pytest

from agentrl.sandbox.admission import Admission, Draining, Overloaded


def _hold(admission, release, started):
    with admission.slot():
        started.release()
        release.wait(5)


def test_full_queue_is_refused_at_once_with_retry_after():
    admission = Admission(max_concurrency=2, queue_size=1, queue_timeout_s=5)
    release, started = threading.Event(), threading.Semaphore(0)
    workers = [threading.Thread(target=_hold, args=(admission, release, started)) for _ in range(3)]
    for worker in workers:
        worker.start()
    started.acquire()
    started.acquire()
    deadline = time.monotonic() + 2
    while admission.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (admission.in_flight, admission.waiting) == (2, 1)
    begin = time.monotonic()
    with pytest.raises(Overloaded) as refused, admission.slot():
        pass
    assert time.monotonic() - begin < 0.5
    assert refused.value.retry_after_s > 0 and int(refused.value.retry_after_header()) >= 1
    release.set()
    for worker in workers:
        worker.join(5)
    assert (admission.in_flight, admission.waiting) == (0, 0)


def test_queue_wait_is_bounded():
    admission = Admission(max_concurrency=1, queue_size=4, queue_timeout_s=0.2)
    release, started = threading.Event(), threading.Semaphore(0)
    holder = threading.Thread(target=_hold, args=(admission, release, started))
    holder.start()
    started.acquire()
    with pytest.raises(Overloaded, match="queue_timeout_s"), admission.slot():
        pass
    release.set()
    holder.join(5)


def test_drain_refuses_new_work():
    admission = Admission(max_concurrency=1, queue_size=0, queue_timeout_s=1)
    admission.begin_drain()
    with pytest.raises(Draining), admission.slot():
        pass
    assert admission.wait_idle(0.1)


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError):
        Admission(max_concurrency=0, queue_size=1, queue_timeout_s=1)


def test_places_go_to_waiters_in_arrival_order():
    """Five requests queue behind a running one; as places free up they run oldest first,
    and a request arriving while they wait queues behind them instead of taking a place."""
    admission = Admission(max_concurrency=1, queue_size=10, queue_timeout_s=30)
    release, started = threading.Event(), threading.Semaphore(0)
    holder = threading.Thread(target=_hold, args=(admission, release, started))
    holder.start()
    started.acquire()
    order: list[int] = []

    def enter(index: int) -> None:
        with admission.slot():
            order.append(index)

    workers = []
    for index in range(6):
        worker = threading.Thread(target=enter, args=(index,))
        worker.start()
        workers.append(worker)
        while admission.waiting < index + 1:  # queued before the next one arrives
            time.sleep(0.001)
    release.set()
    for worker in [holder, *workers]:
        worker.join(10)
    assert order == list(range(6))
    assert (admission.in_flight, admission.waiting) == (0, 0)


def test_a_timed_out_waiter_leaves_the_line():
    admission = Admission(max_concurrency=1, queue_size=2, queue_timeout_s=0.1)
    release, started = threading.Event(), threading.Semaphore(0)
    holder = threading.Thread(target=_hold, args=(admission, release, started))
    holder.start()
    started.acquire()
    with pytest.raises(Overloaded), admission.slot():
        pass
    assert admission.waiting == 0
    release.set()
    holder.join(5)
    with admission.slot():  # the place came back
        assert admission.in_flight == 1
