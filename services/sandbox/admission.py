"""Admission control for one replica: a concurrency limit and a bounded, time-limited queue.

`Admission.slot()` is a context manager around one execution. Up to `max_concurrency` run at
once; up to `queue_size` more wait (at most `queue_timeout_s` each); anything beyond is refused
at once with `Overloaded`, which carries a retry-after hint computed from the recent service
time, so callers back off instead of piling up or timing out. The service answers it with
gRPC RESOURCE_EXHAUSTED (metadata `retry-after-s`) or HTTP 429 (header `Retry-After`).

`begin_drain()` (SIGTERM) makes every later `slot()` raise `Draining`; running executions and
those already queued finish.

What this module does NOT cover: fairness between clients (first come, first served, no
per-client quota) and cross-replica balancing (a load balancer's job; the hint helps it).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
        self._cond = threading.Condition()
        self.in_flight = 0
        self.waiting = 0
        self.draining = False
        self._mean_service_s = 0.1

    def retry_after_s(self) -> float:
        """Expected wait until this replica can take one more request."""
        backlog = self.waiting + 1
        estimate = self._mean_service_s * backlog / self.max_concurrency
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, estimate))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the `max_concurrency` places for the duration of the block."""
        with self._cond:
            if self.draining:
                raise Draining("the sandbox replica is shutting down")
            if self.in_flight >= self.max_concurrency:
                if self.waiting >= self.queue_size:
                    raise Overloaded(
                        f"{self.in_flight} running and {self.waiting} queued (queue_size="
                        f"{self.queue_size})",
                        self.retry_after_s(),
                    )
                self.waiting += 1
                deadline = time.monotonic() + self.queue_timeout_s
                try:
                    while self.in_flight >= self.max_concurrency:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise Overloaded(
                                f"waited {self.queue_timeout_s:g} s in the queue (queue_timeout_s)",
                                self.retry_after_s(),
                            )
                        self._cond.wait(remaining)
                finally:
                    self.waiting -= 1
            self.in_flight += 1
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            with self._cond:
                self.in_flight -= 1
                self._mean_service_s += EWMA_WEIGHT * (elapsed - self._mean_service_s)
                self._cond.notify()

    def begin_drain(self) -> None:
        with self._cond:
            self.draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing runs or waits; True if that happened within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.in_flight or self.waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True
