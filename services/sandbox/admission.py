"""Admission control for one replica: a concurrency limit and a bounded, time-limited queue.

`Admission.slot()` is a context manager around one execution. Up to `max_concurrency` run at
once; up to `queue_size` more wait (at most `queue_timeout_s` each) in arrival order: a place
that frees up is handed to the oldest waiter, and a request arriving while anyone waits queues
behind them (no barging in between a release and the waiter's wake-up). `Overloaded` is raised
only when the replica is really full: the queue holds `queue_size` waiters, or a waiter saw no
place free up for `queue_timeout_s`. It carries a retry-after hint computed from the recent
service time and the backlog, so callers back off instead of piling up. The service answers it
with gRPC RESOURCE_EXHAUSTED (metadata `retry-after-s`) or HTTP 429 (header `Retry-After`).

`begin_drain()` (SIGTERM) makes every later `slot()` raise `Draining`; running executions and
those already queued finish.

What this module does NOT cover: fairness between clients beyond arrival order (no per-client
quota: one client sending many requests gets many places) and cross-replica balancing (a load
balancer's job; the hint helps it). CPU shares between running programs are the backends'
(a CPU quota per run).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Smoothing of the service-time average behind the retry-after hint (weight of the newest run).
EWMA_WEIGHT = 0.1
# The hint never says "retry now" (that would stampede) nor "in an hour".
MIN_RETRY_AFTER_S = 0.1
MAX_RETRY_AFTER_S = 30.0


class Overloaded(Exception):
    """The replica is full; retry after `retry_after_s` seconds (or on another replica)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def retry_after_header(self) -> str:
        """HTTP `Retry-After` takes whole seconds."""
        return str(max(1, math.ceil(self.retry_after_s)))


class Draining(Exception):
    """The replica is shutting down; send the request elsewhere."""


class Admission:
    def __init__(self, max_concurrency: int, queue_size: int, queue_timeout_s: float) -> None:
        if max_concurrency < 1 or queue_size < 0 or queue_timeout_s <= 0:
            raise ValueError("need max_concurrency >= 1, queue_size >= 0 and queue_timeout_s > 0")
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # wait_idle
        self._waiters: deque[_Waiter] = deque()  # oldest first
        self.in_flight = 0
        self.draining = False
        self._mean_service_s = 0.1

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after_s(self) -> float:
        """Expected wait until this replica can take one more request."""
        backlog = self.waiting + 1
        estimate = self._mean_service_s * backlog / self.max_concurrency
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, estimate))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the `max_concurrency` places for the duration of the block."""
        with self._lock:
            if self.draining:
                raise Draining("the sandbox replica is shutting down")
            if self.in_flight < self.max_concurrency and not self._waiters:
                self.in_flight += 1
            else:
                self._wait_in_line()
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            with self._lock:
                self._mean_service_s += EWMA_WEIGHT * (elapsed - self._mean_service_s)
                if self._waiters:  # hand the place over: in_flight stays the same
                    waiter = self._waiters.popleft()
                    waiter.granted = True
                    waiter.wake.notify()
                else:
                    self.in_flight -= 1
                self._changed.notify_all()

    def _wait_in_line(self) -> None:
        """Queue behind the earlier waiters until a place is handed over (lock held)."""
        if len(self._waiters) >= self.queue_size:
            raise Overloaded(
                f"{self.in_flight} running and {len(self._waiters)} queued (queue_size="
                f"{self.queue_size})",
                self.retry_after_s(),
            )
        waiter = _Waiter(threading.Condition(self._lock))
        self._waiters.append(waiter)
        deadline = time.monotonic() + self.queue_timeout_s
        while not waiter.granted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._waiters.remove(waiter)
                self._changed.notify_all()
                raise Overloaded(
                    f"waited {self.queue_timeout_s:g} s in the queue (queue_timeout_s)",
                    self.retry_after_s(),
                )
            waiter.wake.wait(remaining)

    def begin_drain(self) -> None:
        with self._lock:
            self.draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing runs or waits; True if that happened within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self.in_flight or self._waiters:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True


@dataclass
class _Waiter:
    wake: threading.Condition
    granted: bool = False
