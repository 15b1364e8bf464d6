"""The server interceptors wrap a method's handler once, not on every call (grpcio asks each
interceptor for a handler per call): the same method gets the same wrapped handler back while
the inner chain hands back the same handler, and a new one when it does not."""

from collections import namedtuple

import grpc
from prometheus_client import CollectorRegistry

from agentrl.common.grpc_interceptors import (
    DrainInterceptor,
    LoggingInterceptor,
    MetricsInterceptor,
)

Details = namedtuple("Details", "method invocation_metadata")
METHOD = "/agentrl.trainer.v1.TrainerStatusService/GetStatus"


class Context:
    """What the interceptors ask of a call's context."""

    def code(self):
        return None

    def is_active(self) -> bool:
        return True

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self):
        return ()


def handler(answer: str) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(lambda request, context: answer)


def test_each_interceptor_wraps_a_methods_handler_once():
    inner = handler("ok")
    for interceptor in (
        MetricsInterceptor(CollectorRegistry()),
        LoggingInterceptor(),
        DrainInterceptor(),
    ):
        first = interceptor.intercept_service(lambda _: inner, Details(METHOD, ()))
        again = interceptor.intercept_service(lambda _: inner, Details(METHOD, ()))
        assert first is again and first is not inner
        other = interceptor.intercept_service(lambda _: inner, Details(METHOD + "2", ()))
        assert other is not first  # another method, another wrap


def test_a_different_inner_handler_gets_a_fresh_wrap():
    interceptor = LoggingInterceptor()
    first = interceptor.intercept_service(lambda _: handler("ok"), Details(METHOD, ()))
    refusal = handler("refused")  # e.g. auth's aborting handler for an unauthenticated call
    wrapped = interceptor.intercept_service(lambda _: refusal, Details(METHOD, ()))
    assert wrapped is not first
    assert wrapped.unary_unary(None, Context()) == "refused"
