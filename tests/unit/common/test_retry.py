"""The shared retry policy (agentrl.common.retry): a short outage is a pause, a long one is one
error naming the service, its address and the setting; an answer is never retried."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.common.retry import (
    Outage,
    ServiceUnavailableError,
    acall_with_deadline,
    backoff_s,
    call_with_deadline,
)

OUTAGE = Outage("reward", "10.0.0.7:50053", "reward.reconnect_deadline_s", 0.3)


def refused(err: BaseException) -> bool:
    return isinstance(err, ConnectionRefusedError)


def flaky(failures: int):
    calls = []

    def op() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionRefusedError("connection refused")
        return "scored"

    return op, calls


def test_an_outage_shorter_than_the_deadline_is_a_pause() -> None:
    op, calls = flaky(2)
    assert call_with_deadline(op, OUTAGE, refused) == "scored"
    assert len(calls) == 3


def test_a_longer_outage_is_one_error_naming_service_address_and_setting() -> None:
    op, calls = flaky(10**9)
    with pytest.raises(ServiceUnavailableError) as info:
        call_with_deadline(op, OUTAGE, refused)
    message = str(info.value)
    for part in ("reward", "10.0.0.7:50053", "reward.reconnect_deadline_s", "refused"):
        assert part in message
    assert info.value.outage is OUTAGE
    assert len(calls) > 1


def test_an_answer_is_not_retried() -> None:
    calls = []

    def op() -> None:
        calls.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        call_with_deadline(op, OUTAGE, refused)
    assert len(calls) == 1


def test_the_async_form_retries_the_same_way() -> None:
    op, calls = flaky(2)

    async def attempt() -> str:
        return op()

    assert asyncio.run(acall_with_deadline(attempt, OUTAGE, refused)) == "scored"
    assert len(calls) == 3
    with pytest.raises(ServiceUnavailableError, match="reward.reconnect_deadline_s"):
        asyncio.run(acall_with_deadline(flaky_async(), OUTAGE, refused))


def flaky_async():
    async def attempt() -> None:
        raise ConnectionRefusedError("connection refused")

    return attempt


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    for retry, step in ((1, 0.05), (2, 0.1), (3, 0.2), (10, 2.0)):
        sleeps = [backoff_s(retry) for _ in range(200)]
        assert all(step * 0.5 <= s <= step for s in sleeps)
        assert len(set(sleeps)) > 1  # jittered
