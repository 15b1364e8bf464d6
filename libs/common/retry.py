"""One retry policy for every client of a service across the network (Redis, vLLM, sandbox,
reward, search): retry while the service is unreachable, with jittered exponential backoff,
until a deadline from config; then one error that names the service, its address and the
setting.

    value = call_with_deadline(op, Outage("reward", "127.0.0.1:50053",
                                          "reward.reconnect_deadline_s", 30.0),
                               retry_on=lambda err: isinstance(err, ConnectionError))
    value = await acall_with_deadline(coro_fn, outage, retry_on=...)

So an outage shorter than the deadline is a pause (the caller sees a slow call) and a longer one
is `ServiceUnavailableError`. What counts as "unreachable" is the caller's `retry_on`: a refused
connection, a reset, gRPC UNAVAILABLE, a server restarting; never an answer (a 4xx, a gRPC
INVALID_ARGUMENT), which retrying cannot change.

Backoff: the first retry after BACKOFF_INITIAL_S, doubling to BACKOFF_MAX_S, each sleep scaled by
a random factor in [0.5, 1] so clients that lost the same server do not return in step. Users:
streams.call_with_deadline (Redis), grpc_client (sandbox, reward, search), inference/pool.py
(vLLM generation).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

BACKOFF_INITIAL_S = 0.05  # first retry almost at once: a dropped connection reconnects at once
BACKOFF_MAX_S = 2.0  # keep polling a restarting server often enough to resume within ~2 s


@dataclass(frozen=True)
class Outage:
    """Who is being waited for, for how long, and which setting says so."""

    service: str
    """`Redis`, `vLLM`, `sandbox`, `reward`, `search`."""
    address: str
    setting: str
    """The config field of `deadline_s`, e.g. `reward.reconnect_deadline_s`."""
    deadline_s: float

    def error(self, cause: BaseException, extra: str = "") -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"the {self.service} service at {self.address} was unreachable for "
            f"{self.deadline_s:g} s ({type(cause).__name__}: {cause}); check that it runs and "
            f"that its address is right{extra} ({self.setting} sets how long to wait)",
            outage=self,
        )


class ServiceUnavailableError(ConnectionError):
    """A service stayed unreachable past its deadline; `outage` says which."""

    def __init__(self, message: str, outage: Outage | None = None) -> None:
        super().__init__(message)
        self.outage = outage


def backoff_s(retry: int, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S):
    """Sleep before retry number `retry` (1 = the first), jittered to [0.5, 1] of the step."""
    return min(initial_s * 2 ** (retry - 1), max_s) * random.uniform(0.5, 1.0)


def call_with_deadline(
    op: Callable[[], T],
    outage: Outage,
    retry_on: Callable[[BaseException], bool],
    *,
    backoff_max_s: float = BACKOFF_MAX_S,
    error: Callable[[BaseException], BaseException] | None = None,
) -> T:
    """`op()`, retried while `retry_on(err)` until `outage.deadline_s` has passed; then
    `error(err)` (default `outage.error(err)`) is raised from the last error."""
    deadline = time.monotonic() + outage.deadline_s
    retry = 0
    while True:
        try:
            return op()
        except Exception as err:
            if not retry_on(err):
                raise
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise (error or outage.error)(err) from err
            retry += 1
            time.sleep(min(backoff_s(retry, max_s=backoff_max_s), remaining_s))


async def acall_with_deadline(
    op: Callable[[], Awaitable[T]],
    outage: Outage,
    retry_on: Callable[[BaseException], bool],
    *,
    backoff_max_s: float = BACKOFF_MAX_S,
    error: Callable[[BaseException], BaseException] | None = None,
) -> T:
    """The asyncio form of `call_with_deadline`: `await op()`, retried the same way."""
    deadline = time.monotonic() + outage.deadline_s
    retry = 0
    while True:
        try:
            return await op()
        except Exception as err:
            if not retry_on(err):
                raise
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise (error or outage.error)(err) from err
            retry += 1
            await asyncio.sleep(min(backoff_s(retry, max_s=backoff_max_s), remaining_s))
