"""Run a gRPC service the way every AgentRL service runs one: `serve(...)` -> `GrpcServer`.

`serve` builds a `grpc.Server` bound to loopback by default (services listen elsewhere only when
told to), registers the caller's servicers, the standard `grpc.health.v1` service
(grpcio-health-checking's HealthServicer; overall "" and each named service SERVING) and server
reflection, and installs the interceptors of agentrl.common.grpc_interceptors, outermost first:

1. metrics (Prometheus): `agentrl_grpc_server_requests_total` by service, method and code;
   `agentrl_grpc_server_request_duration_seconds`; `agentrl_grpc_server_in_flight_requests`;
2. logging: one structured record per call (method, code, duration_s, peer);
3. auth (`agentrl.common.auth.AuthServerInterceptor`) when a token is configured;
4. drain: counts in-flight calls and, once shutdown began, rejects new ones with UNAVAILABLE.

Graceful shutdown (`stop`, or SIGTERM/SIGINT once `install_signal_handlers` ran in the main
thread): health turns NOT_SERVING first, new calls are rejected with UNAVAILABLE while health and
reflection keep answering (so probes and load balancers see NOT_SERVING, not a refused
connection), in-flight calls drain up to the grace period, then the server stops and cancels
whatever still runs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from agentrl.common import auth, shutdown
from agentrl.common.grpc_interceptors import (
    DrainInterceptor,
    LoggingInterceptor,
    MetricsInterceptor,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Enough for a service whose calls mostly wait on I/O; CPU-bound services run their own pools.
DEFAULT_MAX_WORKERS = 16
# Kubernetes sends SIGKILL 30 s after SIGTERM by default; drain well inside that.
DEFAULT_GRACE_S = 20.0
# Clients ping every 30 s (agentrl.common.grpc_client); accept pings down to 10 s apart instead of
# answering more frequent ones with GOAWAY "too_many_pings".
MIN_CLIENT_PING_INTERVAL_MS = 10_000
# Messages carry token id lists and tool outputs; 64 MiB bounds a runaway payload.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Five minutes: new replicas receive traffic within minutes, and a reconnect costs a few ms.
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
# Calls running when a connection ages out get this long to finish (longest sandbox timeout).
MAX_CONNECTION_AGE_GRACE_MS = 10 * 60 * 1000

ServicerRegistration = Callable[[grpc.Server], None]
"""Adds servicers to a server, e.g. `lambda s: add_FooServicer_to_server(FooServicer(), s)`."""


class GrpcServer:
    """A started gRPC server: `.port`, `.set_serving()`, `.stop(grace_s)`, `.wait()`."""

    def __init__(
        self,
        server: grpc.Server,
        host: str,
        port: int,
        health_servicer: health.HealthServicer,
        service_names: Sequence[str],
        drain: DrainInterceptor,
        grace_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self._server = server
        self._health = health_servicer
        self._service_names = tuple(service_names)
        self._drain = drain
        self._grace_s = grace_s
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._previous_handlers: dict[int, Any] = {}

    @property
    def address(self) -> str:
        """`host:port` to dial (IPv6 hosts in brackets)."""
        return f"{_bracket(self.host)}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Application calls running now (health and reflection not counted)."""
        return self._drain.in_flight

    def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for "" and every service (ignored once stopping)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self._service_names):
            self._health.set(name, status)

    def stop(self, grace_s: float | None = None) -> bool:
        """Shut down gracefully; True when every in-flight call finished within the grace.

        Health turns NOT_SERVING, new calls get UNAVAILABLE, running calls get up to `grace_s`
        (default: the server's grace) to finish, then the server stops. A second call while the
        first still drains stops at once (grace 0). Returns after the server has stopped.
        """
        grace_s = self._grace_s if grace_s is None else grace_s
        with self._stop_lock:
            if self._stopping:
                if not self._stopped.is_set():
                    self._drain.abandon()
                    self._server.stop(0).wait()
                return self._drain.in_flight == 0
            self._stopping = True
        deadline = time.monotonic() + grace_s
        self._health.enter_graceful_shutdown()
        self._drain.begin_drain()
        log.info(
            "draining gRPC server",
            extra={"address": self.address, "in_flight": self._drain.in_flight, "grace_s": grace_s},
        )
        drained = self._drain.wait_drained(deadline - time.monotonic())
        # Calls accepted just before begin_drain() may not be counted yet: grpc's own stop grace
        # lets them finish; it also refuses anything new, health included, from here on.
        self._server.stop(max(deadline - time.monotonic(), 0.0)).wait()
        self._stopped.set()
        self._restore_signal_handlers()
        log.info("gRPC server stopped", extra={"address": self.address, "drained": drained})
        return drained

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stopped (or `timeout_s` passed); True when it stopped."""
        # Wake up regularly so signal handlers get to run in the main thread.
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._stopped.is_set():
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                return False
            self._stopped.wait(remaining)
        self._restore_signal_handlers()
        return True

    def install_signal_handlers(self) -> None:
        """On SIGTERM/SIGINT: `stop()` in a background thread; a second signal stops at once.

        Only the main thread can install signal handlers (ValueError elsewhere). The previous
        handlers come back when `stop()` or `wait()` returns in the main thread.
        """
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("install_signal_handlers() must be called from the main thread")

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="grpc-server-stop", daemon=True).start()

        self._previous_handlers = shutdown.install_shutdown_handler(on_signal)

    def _restore_signal_handlers(self) -> None:
        # signal.signal() works only in the main thread: a signal-triggered stop runs in a
        # background thread and leaves the restore to wait(), which entrypoints call from main.
        if self._previous_handlers and threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(
    registrations: ServicerRegistration | Iterable[ServicerRegistration],
    service_names: Sequence[str],
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    max_workers: int = DEFAULT_MAX_WORKERS,
    token: str | None | Any = auth.FROM_ENV,
    grace_s: float = DEFAULT_GRACE_S,
    registry: CollectorRegistry | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> GrpcServer:
    """Build, bind and start a gRPC server; returns it with the bound port.

    registrations: callbacks adding servicers to the server.
    service_names: full names of the services they add (`agentrl.sandbox.v1.SandboxService`):
        reported by health and listed by reflection.
    host/port: bind address; port 0 picks a free port. Binding a port in use raises OSError.
    max_workers: threads running calls. Health checks share them: size the pool so that slow
        calls cannot take every thread, or probes will time out.
    grace_s: default drain time of `stop()` and of a SIGTERM.
    token: the shared auth token; default `auth.load_token()`, None turns auth off.
    registry: Prometheus registry for the call metrics (default: the global one).
    options: extra grpc channel arguments, appended to (and overriding) the defaults.
    """
    if callable(registrations):
        registrations = [registrations]
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    for name in service_names:
        if not name or "/" in name or "." not in name:
            raise ValueError(f"service name {name!r} must be a full name like 'agentrl.x.v1.Foo'")
    token = auth.resolve_token(token)

    drain = DrainInterceptor()
    interceptors: list[grpc.ServerInterceptor] = [
        MetricsInterceptor(registry),
        LoggingInterceptor(),
    ]
    if token is not None:
        interceptors.append(auth.AuthServerInterceptor(token))
    interceptors.append(drain)
    server_options = [
        # grpc defaults to SO_REUSEPORT, which lets a second server bind a port in use silently.
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Clients keep one HTTP/2 connection to a Kubernetes Service, so replicas added by an
        # autoscaler would get no traffic: end connections after a while (GOAWAY, in-flight
        # calls finish within the grace) so clients reconnect and spread over the new pods.
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]
    # grpc takes the FIRST value of a repeated argument: the caller's replace the defaults.
    server_options = list({**dict(server_options), **dict(options)}.items())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-worker"),
        interceptors=interceptors,
        options=server_options,
    )
    for register in registrations:
        register(server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    address = f"{_bracket(host)}:{port}"
    try:
        bound_port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises RuntimeError("Failed to bind ...")
        raise OSError(f"cannot bind gRPC server to {address}: {exc}") from exc
    if bound_port == 0:
        raise OSError(f"cannot bind gRPC server to {address} (in use or bad address)")
    running = GrpcServer(server, host, bound_port, health_servicer, service_names, drain, grace_s)
    running.set_serving(True)
    server.start()
    log.info(
        "gRPC server listening",
        extra={
            "address": running.address,
            "services": list(service_names),
            "auth": token is not None,
        },
    )
    return running
