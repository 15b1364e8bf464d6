"""Dial AgentRL gRPC services: `create_channel(target, ...)` with auth, keepalive, deadlines, retries.

The channel returned is wrapped in `ClientInterceptor`, which on every call
- attaches `authorization: Bearer <token>` metadata when a token is configured;
- sets a deadline when the caller gave none (`default_timeout_s`); the deadline covers the call
  with all its retries, as gRPC's own retry policy does;
- retries unary-unary calls that fail with UNAVAILABLE (server restarting, connection refused,
  draining) with exponential backoff and jitter, at most `RetryPolicy.max_attempts` attempts in
  all. No other status is retried: DEADLINE_EXCEEDED means the budget is spent, and anything
  else is an answer. Streaming calls get metadata and deadline but no retries (a consumed
  request iterator or half-read response stream cannot be replayed). A retried call may reach
  the server twice, so services keep such RPCs idempotent (tasks carry idempotency keys).
- with an `outage` (`retry.Outage`: service, setting, deadline from config), retries UNAVAILABLE
  with the shared policy of agentrl.common.retry instead: jittered backoff until the outage's
  deadline (still within the call's own deadline), so a restart shorter than it is a pause;
  past it the error names the service, its address and the setting.
- raises `RpcCallError` (a `grpc.RpcError` with `.code()`, `.details()`, `.target`, `.method`,
  `.attempts`) whose message names the target and method.

`stub.Method.future(...)` works, but through retries it blocks like a direct call.

`create_spread_channel(target, n)`: n such channels, each on its own connection, taking unary
calls in turn (a server replica with several worker processes on one port, search.workers).
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from agentrl.common import auth
from agentrl.common import retry as retry_policy

log = logging.getLogger(__name__)

# A dead peer behind a NAT or load balancer is noticed within ~40 s instead of never; the server
# side (agentrl.common.grpc_server) accepts pings this frequent.
KEEPALIVE_TIME_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0
# Most AgentRL RPCs answer within seconds; long tool runs pass their own timeout.
DEFAULT_TIMEOUT_S = 30.0
# Same bound as the server (agentrl.common.grpc_server.MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for UNAVAILABLE: sleep initial, initial*multiplier, ... ≤ max."""

    max_attempts: int = 4
    """Attempts in all, the first included (1 = never retry)."""
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    """Each sleep is scaled by a random factor in [1 - jitter, 1 + jitter] so clients spread out."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("backoff must satisfy 0 <= initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("multiplier must be >= 1 and jitter in [0, 1)")

    def backoff_s(self, retry: int) -> float:
        """Sleep before retry number `retry` (1 = the first retry)."""
        base = min(self.initial_backoff_s * self.multiplier ** (retry - 1), self.max_backoff_s)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


NO_RETRY = RetryPolicy(max_attempts=1)


class RpcCallError(grpc.RpcError):
    """A failed call: `code()`, `details()`, and where it went (`target`, `method`, `attempts`)."""

    def __init__(
        self, target: str, method: str, code: grpc.StatusCode, details: str, attempts: int
    ) -> None:
        self.target = target
        self.method = method
        self._code = code
        self._details = details
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{method} on {target} failed with {code.name}{tries}: {details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Sequence[tuple[str, str]] | None),
            ("credentials", Any),
            ("wait_for_ready", bool | None),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    pass


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Auth metadata, default deadline, and UNAVAILABLE retries (see the module docstring)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        default_timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),
        outage: retry_policy.Outage | None = None,
    ) -> None:
        self.target = target
        self._metadata = auth.auth_metadata(token) if token else ()
        self._default_timeout_s = default_timeout_s
        self._retry = retry
        self._outage = outage

    def _details(self, details: grpc.ClientCallDetails, timeout: float | None) -> _CallDetails:
        metadata = list(details.metadata or ())
        if self._metadata and not any(k == auth.AUTH_METADATA_KEY for k, _ in metadata):
            metadata.extend(self._metadata)
        return _CallDetails(
            details.method,
            timeout,
            metadata or None,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def _timeout(self, details: grpc.ClientCallDetails) -> float | None:
        return details.timeout if details.timeout is not None else self._default_timeout_s

    def intercept_unary_unary(self, continuation, client_call_details, request):
        method = _method_name(client_call_details.method)
        timeout_s = self._timeout(client_call_details)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        outage_end = None if self._outage is None else time.monotonic() + self._outage.deadline_s
        attempt = 0
        while True:
            attempt += 1
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            outcome = continuation(self._details(client_call_details, remaining), request)
            error = outcome.exception()
            if error is None:
                return outcome
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
            if code is grpc.StatusCode.UNAVAILABLE and outage_end is not None:
                sleep_s = retry_policy.backoff_s(attempt)
                if time.monotonic() + sleep_s < min(outage_end, deadline or outage_end):
                    time.sleep(sleep_s)
                    continue
                if time.monotonic() + sleep_s >= outage_end:  # the outage, not the call, ran out
                    details = str(self._outage.error(RuntimeError(details)))
            elif code is grpc.StatusCode.UNAVAILABLE and attempt < self._retry.max_attempts:
                sleep_s = self._retry.backoff_s(attempt)
                if deadline is None or time.monotonic() + sleep_s < deadline:
                    log.info(
                        "retrying gRPC call after UNAVAILABLE",
                        extra={
                            "target": self.target,
                            "method": method,
                            "attempt": attempt,
                            "backoff_s": round(sleep_s, 3),
                            "details": details,
                        },
                    )
                    time.sleep(sleep_s)
                    continue
            raise RpcCallError(self.target, method, code, details, attempt) from (
                error if isinstance(error, BaseException) else None
            )

    def intercept_unary_stream(self, continuation, client_call_details, request):
        details = self._details(client_call_details, self._timeout(client_call_details))
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        details = self._details(client_call_details, self._timeout(client_call_details))
        return continuation(details, request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        details = self._details(client_call_details, self._timeout(client_call_details))
        return continuation(details, request_iterator)


def channel_options(
    keepalive_time_s: float = KEEPALIVE_TIME_S, keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
) -> list[tuple[str, Any]]:
    """Channel arguments: keepalive pings (also on idle channels) and message size limits."""
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # A restarted server is reconnected to within ~2 s (gRPC's own default grows to 120 s,
        # which would outlast every reconnect deadline).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", int(retry_policy.BACKOFF_MAX_S * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def create_channel(
    target: str,
    *,
    token: str | None | Any = auth.FROM_ENV,
    default_timeout_s: float | None = DEFAULT_TIMEOUT_S,
    retry: RetryPolicy = RetryPolicy(),
    keepalive_time_s: float = KEEPALIVE_TIME_S,
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    options: Sequence[tuple[str, Any]] = (),
    outage: retry_policy.Outage | None = None,
) -> grpc.Channel:
    """An insecure channel to `target` (`host:port`) wrapped in `ClientInterceptor`.

    token: default `auth.load_token()`; None sends no token.
    default_timeout_s: deadline for calls that pass no `timeout=` (None: no deadline).
    retry: policy for UNAVAILABLE on unary calls (`NO_RETRY` to disable).
    outage: retry UNAVAILABLE until its deadline instead (`outage_for` builds it from config).
    options: extra grpc channel arguments, appended to (and overriding) the defaults.
    Close it with `.close()` or use it as a context manager.
    """
    if not target:
        raise ValueError("target must be 'host:port', got an empty string")
    if default_timeout_s is not None and default_timeout_s <= 0:
        raise ValueError(f"default_timeout_s must be > 0 or None, got {default_timeout_s}")
    channel = grpc.insecure_channel(
        target, options=[*channel_options(keepalive_time_s, keepalive_timeout_s), *options]
    )
    interceptor = ClientInterceptor(
        target, auth.resolve_token(token), default_timeout_s, retry, outage
    )
    return grpc.intercept_channel(channel, interceptor)


def outage_for(service: str, endpoint: Any) -> retry_policy.Outage:
    """The outage policy of a config section (`config.reward`, `config.sandbox`...): its target
    and its `reconnect_deadline_s`."""
    return retry_policy.Outage(
        service, endpoint.target(), f"{service}.reconnect_deadline_s", endpoint.reconnect_deadline_s
    )


class SpreadChannel(grpc.Channel):
    """Several channels to one target, each with its own TCP connection; each unary-unary call
    goes to the next one in turn.

    One channel is one HTTP/2 connection, and a server whose replica runs several worker
    processes on one port (search.workers: SO_REUSEPORT) hands each connection to one worker:
    a client that needs more than one worker's throughput needs several connections. grpcio
    shares one connection among channels with equal arguments (its global subchannel pool),
    so each channel here gets `grpc.use_local_subchannel_pool`. Streaming calls use the first
    channel.
    """

    def __init__(self, channels: Sequence[grpc.Channel]):
        if not channels:
            raise ValueError("SpreadChannel needs at least one channel")
        self._channels = list(channels)
        self._turn = itertools.count()

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **kw):
        callables = [
            c.unary_unary(method, request_serializer, response_deserializer, **kw)
            for c in self._channels
        ]
        return _SpreadCallable(callables, self._turn)

    def unary_stream(self, *args, **kw):
        return self._channels[0].unary_stream(*args, **kw)

    def stream_unary(self, *args, **kw):
        return self._channels[0].stream_unary(*args, **kw)

    def stream_stream(self, *args, **kw):
        return self._channels[0].stream_stream(*args, **kw)

    def subscribe(self, callback, try_to_connect=False):
        self._channels[0].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        self._channels[0].unsubscribe(callback)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SpreadCallable(grpc.UnaryUnaryMultiCallable):
    def __init__(self, callables: list[grpc.UnaryUnaryMultiCallable], turn: itertools.count):
        self._callables = callables
        self._turn = turn

    def _next(self) -> grpc.UnaryUnaryMultiCallable:
        return self._callables[next(self._turn) % len(self._callables)]

    def __call__(self, *args, **kw):
        return self._next()(*args, **kw)

    def with_call(self, *args, **kw):
        return self._next().with_call(*args, **kw)

    def future(self, *args, **kw):
        return self._next().future(*args, **kw)


def create_spread_channel(target: str, num_connections: int, **kwargs: Any) -> SpreadChannel:
    """`num_connections` channels to `target` as `create_channel(target, **kwargs)` makes them,
    each on its own connection, behind one `SpreadChannel`."""
    if num_connections < 1:
        raise ValueError(f"num_connections must be >= 1, got {num_connections}")
    options = [*kwargs.pop("options", ()), ("grpc.use_local_subchannel_pool", 1)]
    return SpreadChannel(
        [create_channel(target, options=options, **kwargs) for _ in range(num_connections)]
    )
