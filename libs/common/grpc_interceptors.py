"""The interceptors every AgentRL gRPC server installs (`agentrl.common.grpc_server.serve`).

Outermost first: metrics (Prometheus: `agentrl_grpc_server_requests_total` by service, method
and code, `agentrl_grpc_server_request_duration_seconds`, `agentrl_grpc_server_in_flight_requests`),
logging (one structured record per call: method, code, duration_s, peer), then auth (in
agentrl.common.auth) and drain (counts in-flight calls; once shutdown began, rejects new ones
with UNAVAILABLE while health and reflection keep answering).

Each interceptor wraps a method's handler once and hands the same wrapped handler to every
later call of that method (grpcio asks the interceptors for a handler on every call); what
differs per call (metadata, context) is read when the call runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

# Call records share the server's logger: one place to raise or lower gRPC call logging.
log = logging.getLogger("agentrl.common.grpc_server")

from agentrl.common import auth, metrics
from agentrl.common.logging import log_context

# Optional call metadata that names a request across services in the logs.
REQUEST_ID_METADATA_KEY = "x-request-id"
# Neither counted as in-flight work (a health Watch stays open for the server's lifetime) nor
# refused while draining (probes must see NOT_SERVING).
_LIFECYCLE_EXEMPT_PREFIXES = auth.GRPC_EXEMPT_METHOD_PREFIXES


def split_method(full_method: str) -> tuple[str, str]:
    """`/agentrl.trainer.v1.TrainerStatusService/GetStatus` -> (service, method)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def _wrap_handler(
    handler: grpc.RpcMethodHandler,
    around: Callable[[Callable[[], Any], grpc.ServicerContext], Any],
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour runs inside `around(call_behaviour, context)`.

    For streaming responses `call_behaviour()` returns the response iterator and `around` must
    return an iterator too (the call ends when that stream ends).
    """
    if handler.request_streaming and handler.response_streaming:
        behaviour, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behaviour, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behaviour, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        return around(lambda: behaviour(request, context), context)

    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _wrapped_once(
    cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]],
    method: str,
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler],
) -> grpc.RpcMethodHandler:
    """`wrap(handler)`, built on a method's first call and reused while the inner chain hands
    back the same handler (one entry per method: an inner interceptor that answers with a fresh
    handler, e.g. auth's refusal, gets a fresh wrap that replaces the entry)."""
    entry = cache.get(method)
    if entry is not None and entry[0] is handler:
        return entry[1]
    wrapped = wrap(handler)
    cache[method] = (handler, wrapped)
    return wrapped


def _status_of(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if not raised:
        return grpc.StatusCode.OK
    # A response stream closed under us means the client went away; any other exception without
    # abort()/set_code() reaches the client as UNKNOWN.
    return grpc.StatusCode.CANCELLED if not context.is_active() else grpc.StatusCode.UNKNOWN


@dataclass(frozen=True)
class CallInfo:
    """What an observing interceptor knows about a method's calls before they run."""

    full_method: str
    service: str
    method: str


class _CallObserver(grpc.ServerInterceptor):
    """Base of the metrics and logging interceptors: hooks around each call, streams included.

    `_scope(info)` wraps the servicer's execution (and each step of a response stream);
    `_started(info)` runs first and `_finished(info, context, code, duration_s)` once the call
    ended (for response streams: once the stream ended).
    """

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _scope(
        self, info: CallInfo, context: grpc.ServicerContext
    ) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def _started(self, info: CallInfo) -> None:
        pass

    def _finished(
        self,
        info: CallInfo,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        duration_s: float,
    ) -> None:
        pass

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full_method = handler_call_details.method
        return _wrapped_once(
            self._handlers, full_method, handler, lambda h: self._observed(full_method, h)
        )

    def _observed(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        info = CallInfo(full_method, *split_method(full_method))

        def finish(context: grpc.ServicerContext, start: float, raised: bool) -> None:
            self._finished(info, context, _status_of(context, raised), time.perf_counter() - start)

        def around(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            self._started(info)
            start = time.perf_counter()
            raised = True
            try:
                with self._scope(info, context):
                    result = call()
                raised = False
            finally:
                if raised or not handler.response_streaming:
                    finish(context, start, raised)
            if not handler.response_streaming:
                return result
            return self._observe_stream(
                info, context, result, lambda raised: finish(context, start, raised)
            )

        return _wrap_handler(handler, around)

    def _observe_stream(
        self,
        info: CallInfo,
        context: grpc.ServicerContext,
        responses: Iterator[Any],
        finish: Callable[[bool], None],
    ) -> Iterator[Any]:
        raised = True
        try:
            with self._scope(info, context):
                yield from responses
            raised = False
        finally:
            finish(raised)


class MetricsInterceptor(_CallObserver):
    """Prometheus: calls by service, method and final code; latency; calls in flight."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        labels = ("grpc_service", "grpc_method")
        self._requests = metrics.counter(
            "grpc_server",
            "requests",
            "total",
            "gRPC calls handled, by final status code.",
            (*labels, "grpc_code"),
            registry,
        )
        self._duration = metrics.histogram(
            "grpc_server",
            "request_duration",
            "seconds",
            "gRPC call handling time.",
            labels,
            registry,
        )
        self._in_flight = metrics.gauge(
            "grpc_server",
            "in_flight",
            "requests",
            "gRPC calls being handled now.",
            labels,
            registry,
        )

        self._requests_of = metrics.children(self._requests)
        self._duration_of = metrics.children(self._duration)
        self._in_flight_of = metrics.children(self._in_flight)

    def _started(self, info: CallInfo) -> None:
        self._in_flight_of(info.service, info.method).inc()

    def _finished(
        self,
        info: CallInfo,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        duration_s: float,
    ) -> None:
        self._in_flight_of(info.service, info.method).dec()
        self._requests_of(info.service, info.method, code.name).inc()
        self._duration_of(info.service, info.method).observe(duration_s)


class LoggingInterceptor(_CallObserver):
    """One record per call: method, code, duration_s, peer (DEBUG when OK, WARNING otherwise).

    A call's `x-request-id` metadata, when present, is bound as the `request_id` log context
    field while the call runs, so the servicer's own records carry it too.
    """

    def _scope(
        self, info: CallInfo, context: grpc.ServicerContext
    ) -> contextlib.AbstractContextManager[Any]:
        metadata = context.invocation_metadata() or ()
        request_id = next((v for k, v in metadata if k == REQUEST_ID_METADATA_KEY), None)
        return log_context(request_id=request_id) if request_id else contextlib.nullcontext()

    def _finished(
        self,
        info: CallInfo,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        duration_s: float,
    ) -> None:
        # OK calls at DEBUG: a busy service handles thousands per second.
        level = logging.DEBUG if code is grpc.StatusCode.OK else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "grpc call %s %s",
                info.full_method,
                code.name,
                extra={
                    "method": info.full_method,
                    "code": code.name,
                    "duration_s": round(duration_s, 6),
                    "peer": context.peer(),
                },
            )


class DrainInterceptor(grpc.ServerInterceptor):
    """Counts in-flight application calls; after `begin_drain()` refuses new ones (UNAVAILABLE)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._draining = False
        self._abandoned = False
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def begin_drain(self) -> None:
        with self._cond:
            self._draining = True

    def abandon(self) -> None:
        """Wake `wait_drained` now: shutdown no longer waits for running calls."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    def wait_drained(self, timeout_s: float) -> bool:
        """Block until no application call runs, at most `timeout_s`; True when drained."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._in_flight == 0 or self._abandoned, timeout=max(timeout_s, 0)
            )
            return self._in_flight == 0

    def _enter(self, context: grpc.ServicerContext) -> None:
        with self._cond:
            if self._draining:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            self._in_flight += 1

    def _exit(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or auth.is_exempt_grpc_method(
            handler_call_details.method, _LIFECYCLE_EXEMPT_PREFIXES
        ):
            return handler
        return _wrapped_once(self._handlers, handler_call_details.method, handler, self._counted)

    def _counted(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        def around(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
            self._enter(context)
            if handler.response_streaming:
                return self._drain_stream(call)
            try:
                return call()
            finally:
                self._exit()

        return _wrap_handler(handler, around)

    def _drain_stream(self, call: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        try:
            yield from call()
        finally:
            self._exit()
