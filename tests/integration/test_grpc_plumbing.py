"""Shared service plumbing against real servers on loopback: gRPC health, drain, reflection, auth,
client retries and deadlines, metrics, logging, and the FastAPI app run by uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import prometheus_client
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from agentrl.common import grpc_client, grpc_server, http
from agentrl.common.auth import TOKEN_ENV
from agentrl.common.logging import get_context
from agentrl.proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc

TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerStatusService"].full_name
GET_STATUS = f"/{TRAINER_SERVICE}/GetStatus"
TOKEN = "s3cret-token-for-tests"
REQUEST = trainer_pb2.GetTrainerStatusRequest()
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Retries in tests back off in milliseconds so a test with several attempts stays fast.
FAST_RETRY = grpc_client.RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


class StatusServicer(trainer_pb2_grpc.TrainerStatusServiceServicer):
    """GetStatus that counts calls, can fail with scripted codes, and can block until released."""

    def __init__(
        self,
        failures: list[grpc.StatusCode] | None = None,
        always_fail: grpc.StatusCode | None = None,
        block: bool = False,
    ) -> None:
        self.calls = 0
        self.failures = list(failures or [])
        self.always_fail = always_fail
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.contexts: list[dict] = []
        self._lock = threading.Lock()

    def GetStatus(self, request, context):
        with self._lock:
            self.calls += 1
            failure = self.failures.pop(0) if self.failures else self.always_fail
            self.contexts.append(get_context())
        self.started.set()
        self.release.wait(timeout=30)
        if failure is not None:
            context.abort(failure, f"scripted {failure.name}")
        return trainer_pb2.TrainerStatus(run_id="run-1", step=self.calls, phase="training")


@pytest.fixture
def start_server() -> Iterator[Callable[..., grpc_server.GrpcServer]]:
    """Starts real servers for a test and stops them (and unblocks their servicers) after it."""
    started: list[tuple[grpc_server.GrpcServer, StatusServicer]] = []

    def start(servicer: StatusServicer, **kwargs) -> grpc_server.GrpcServer:
        kwargs.setdefault("token", None)
        kwargs.setdefault("max_workers", 4)
        server = grpc_server.serve(
            lambda s: trainer_pb2_grpc.add_TrainerStatusServiceServicer_to_server(servicer, s),
            [TRAINER_SERVICE],
            **kwargs,
        )
        started.append((server, servicer))
        return server

    yield start
    for server, servicer in started:
        servicer.release.set()
        server.stop(0)


@pytest.fixture
def channels() -> Iterator[Callable[..., grpc.Channel]]:
    opened: list[grpc.Channel] = []

    def open_channel(target: str, raw: bool = False, **kwargs) -> grpc.Channel:
        if raw:  # no interceptor: exactly what a foreign client (grpcurl, kubelet) sends
            channel = grpc.insecure_channel(target)
        else:
            kwargs.setdefault("token", None)
            channel = grpc_client.create_channel(target, **kwargs)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _proc_net_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # /proc/net/tcp{,6} print addresses as 32-bit words in host (little-endian) byte order.
    raw = b"".join(
        bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)
    )
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # a dual-stack socket bound to ::ffff:127.0.0.1
    return address


def listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the sockets listening on `port` (Linux /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(_proc_net_address(address))
    return found


# --- bind address --------------------------------------------------------------------------------


def test_grpc_server_binds_loopback_by_default(start_server):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    server = start_server(StatusServicer())
    assert server.host == "127.0.0.1"
    # 0.0.0.0 or :: here would mean every interface.
    assert listening_addresses(server.port) == {LOOPBACK}


def test_grpc_server_refuses_a_port_in_use(start_server):
    first = start_server(StatusServicer())
    with pytest.raises(OSError, match=str(first.port)):
        start_server(StatusServicer(), port=first.port)


def test_http_server_binds_loopback_free_port_and_stops():
    server = http.serve_in_thread(http.create_app("test", token=None))
    try:
        assert server.port > 0
        if Path("/proc/net/tcp").exists():
            assert listening_addresses(server.port) == {LOOPBACK}
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=1)


# --- health and graceful shutdown ----------------------------------------------------------------


def test_health_serving_then_not_serving_while_draining(start_server, channels):
    servicer = StatusServicer(block=True)
    server = start_server(servicer, grace_s=10)
    channel = channels(server.address, raw=True)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channel)
    assert health_status(channel) == SERVING
    assert health_status(channel, TRAINER_SERVICE) == SERVING

    slow_call = stub.GetStatus.future(REQUEST, timeout=20)
    assert servicer.started.wait(5)
    assert server.in_flight == 1
    drained: list[bool] = []
    stopper = threading.Thread(target=lambda: drained.append(server.stop(10)))
    stopper.start()

    assert wait_until(lambda: health_status(channel) == NOT_SERVING)
    assert health_status(channel, TRAINER_SERVICE) == NOT_SERVING
    with pytest.raises(grpc.RpcError) as rejected:
        stub.GetStatus(REQUEST, timeout=2)
    assert rejected.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 1, "a call arriving during drain must not reach the servicer"
    assert stopper.is_alive() and not slow_call.done(), "stop() must wait for the in-flight call"

    servicer.release.set()
    assert slow_call.result(timeout=5).run_id == "run-1"
    stopper.join(timeout=5)
    assert drained == [True]
    with pytest.raises(grpc.RpcError) as after_stop:
        stub.GetStatus(REQUEST, timeout=2)
    assert after_stop.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_gives_up_on_calls_that_outlast_the_grace(start_server, channels):
    servicer = StatusServicer(block=True)
    server = start_server(servicer)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, raw=True))
    slow_call = stub.GetStatus.future(REQUEST, timeout=20)
    assert servicer.started.wait(5)

    start = time.monotonic()
    assert server.stop(0.3) is False
    assert time.monotonic() - start < 2.0
    with pytest.raises(grpc.RpcError) as cut:
        slow_call.result(timeout=5)
    assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_sigterm_drains_then_stops(start_server, channels):
    servicer = StatusServicer(block=True)
    server = start_server(servicer, grace_s=10)
    previous = signal.getsignal(signal.SIGTERM)
    server.install_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) is not previous
    channel = channels(server.address, raw=True)
    slow_call = trainer_pb2_grpc.TrainerStatusServiceStub(channel).GetStatus.future(REQUEST)
    assert servicer.started.wait(5)

    os.kill(os.getpid(), signal.SIGTERM)
    assert wait_until(lambda: health_status(channel) == NOT_SERVING)
    assert not server.wait(timeout_s=0.2), "server must keep draining while a call runs"
    servicer.release.set()
    assert slow_call.result(timeout=5).step == 1
    assert server.wait(timeout_s=5)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_set_serving_toggles_health(start_server, channels):
    server = start_server(StatusServicer())
    channel = channels(server.address, raw=True)
    server.set_serving(False)
    assert health_status(channel) == NOT_SERVING
    assert health_status(channel, TRAINER_SERVICE) == NOT_SERVING
    server.set_serving(True)
    assert health_status(channel, TRAINER_SERVICE) == SERVING


# --- reflection ----------------------------------------------------------------------------------


def test_reflection_lists_and_describes_the_service(start_server, channels):
    server = start_server(StatusServicer())
    database = ProtoReflectionDescriptorDatabase(channels(server.address, raw=True))
    services = set(database.get_services())
    assert {TRAINER_SERVICE, "grpc.health.v1.Health"} <= services
    described = descriptor_pool.DescriptorPool(database).FindServiceByName(TRAINER_SERVICE)
    assert "GetStatus" in described.methods_by_name


# --- auth ----------------------------------------------------------------------------------------


def test_grpc_auth_rejects_missing_and_wrong_tokens(start_server, channels):
    servicer = StatusServicer()
    server = start_server(servicer, token=TOKEN)
    raw = channels(server.address, raw=True)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(raw)

    for metadata in [None, (("authorization", "Bearer wrong-token"),), (("authorization", TOKEN),)]:
        with pytest.raises(grpc.RpcError) as denied:
            stub.GetStatus(REQUEST, metadata=metadata, timeout=2)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert servicer.calls == 0

    assert stub.GetStatus(REQUEST, metadata=(("authorization", f"Bearer {TOKEN}"),)).step == 1
    with_client = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, token=TOKEN))
    assert with_client.GetStatus(REQUEST).step == 2
    # Probes and schema discovery need no token.
    assert health_status(raw, TRAINER_SERVICE) == SERVING
    assert TRAINER_SERVICE in ProtoReflectionDescriptorDatabase(raw).get_services()


def test_grpc_auth_token_from_environment(start_server, channels, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = start_server(StatusServicer(), token=grpc_server.auth.FROM_ENV)
    anonymous = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, token=None))
    with pytest.raises(grpc.RpcError) as denied:
        anonymous.GetStatus(REQUEST)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The client side reads the same variable by default.
    channel = grpc_client.create_channel(server.address)
    try:
        assert trainer_pb2_grpc.TrainerStatusServiceStub(channel).GetStatus(REQUEST).step == 1
    finally:
        channel.close()


def test_http_auth_401_without_token_and_probes_open():
    app = http.create_app("test", token=TOKEN)

    @app.get("/v1/status")
    def status() -> dict[str, str]:
        return {"phase": "training"}

    server = http.serve_in_thread(app)
    try:
        url = server.url
        assert httpx.get(f"{url}/v1/status").status_code == 401
        wrong = httpx.get(f"{url}/v1/status", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = httpx.get(f"{url}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json() == {"phase": "training"}
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{url}{open_path}").status_code == 200, open_path
    finally:
        server.stop()


# --- client: retries and deadlines ---------------------------------------------------------------


def test_client_retries_unavailable_until_success(start_server, channels):
    servicer = StatusServicer(failures=[grpc.StatusCode.UNAVAILABLE] * 2)
    server = start_server(servicer)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, retry=FAST_RETRY))
    assert stub.GetStatus(REQUEST).step == 3
    assert servicer.calls == 3


def test_client_gives_up_after_max_attempts(start_server, channels):
    servicer = StatusServicer(always_fail=grpc.StatusCode.UNAVAILABLE)
    server = start_server(servicer)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, retry=FAST_RETRY))
    with pytest.raises(grpc_client.RpcCallError) as failed:
        stub.GetStatus(REQUEST)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.attempts == servicer.calls == FAST_RETRY.max_attempts
    assert server.address in str(failed.value) and GET_STATUS in str(failed.value)


def test_client_does_not_retry_other_codes(start_server, channels):
    servicer = StatusServicer(always_fail=grpc.StatusCode.INVALID_ARGUMENT)
    server = start_server(servicer)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, retry=FAST_RETRY))
    with pytest.raises(grpc_client.RpcCallError) as failed:
        stub.GetStatus(REQUEST)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.calls == 1 and failed.value.attempts == 1


def test_client_deadline_surfaces_deadline_exceeded(start_server, channels):
    servicer = StatusServicer(block=True)
    server = start_server(servicer)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(
        channels(server.address, retry=FAST_RETRY, default_timeout_s=0.3)
    )
    start = time.monotonic()
    with pytest.raises(grpc_client.RpcCallError) as by_default:
        stub.GetStatus(REQUEST)
    assert by_default.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0
    assert servicer.calls == 1, "DEADLINE_EXCEEDED is not retried"
    assert server.address in str(by_default.value) and GET_STATUS in str(by_default.value)

    start = time.monotonic()
    with pytest.raises(grpc_client.RpcCallError) as explicit:
        stub.GetStatus(REQUEST, timeout=0.1)  # a caller's timeout wins over the default
    assert explicit.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 0.25


def test_client_deadline_bounds_retries(start_server, channels):
    servicer = StatusServicer(always_fail=grpc.StatusCode.UNAVAILABLE)
    server = start_server(servicer)
    patient = grpc_client.RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(
        channels(server.address, retry=patient, default_timeout_s=0.5)
    )
    start = time.monotonic()
    with pytest.raises(grpc_client.RpcCallError) as failed:
        stub.GetStatus(REQUEST)
    assert time.monotonic() - start < 1.5
    assert 2 <= servicer.calls == failed.value.attempts < 1000


def test_client_retries_connection_refused_a_bounded_number_of_times(channels):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = f"127.0.0.1:{port}"
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(target, retry=FAST_RETRY))
    with pytest.raises(grpc_client.RpcCallError) as failed:
        stub.GetStatus(REQUEST, timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.value.attempts == FAST_RETRY.max_attempts
    assert target in str(failed.value)


# --- metrics and logs ----------------------------------------------------------------------------


def test_metrics_count_calls_by_method_and_code(start_server, channels):
    registry = prometheus_client.CollectorRegistry()
    servicer = StatusServicer(failures=[grpc.StatusCode.INVALID_ARGUMENT])
    server = start_server(servicer, registry=registry)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address, retry=FAST_RETRY))
    with pytest.raises(grpc.RpcError):
        stub.GetStatus(REQUEST)
    stub.GetStatus(REQUEST)
    stub.GetStatus(REQUEST)

    metrics_app = http.serve_in_thread(http.create_app("test", token=None, registry=registry))
    try:
        text = httpx.get(f"{metrics_app.url}/metrics").text
    finally:
        metrics_app.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("grpc_method", "GetStatus"), ("grpc_service", TRAINER_SERVICE))

    def requests(code: str) -> float | None:
        key = tuple(sorted((*labels, ("grpc_code", code))))
        return samples.get(("agentrl_grpc_server_requests_total", key))

    assert requests("OK") == 2.0
    assert requests("INVALID_ARGUMENT") == 1.0
    assert requests("UNAVAILABLE") is None
    assert samples[("agentrl_grpc_server_request_duration_seconds_count", labels)] == 3.0
    assert samples[("agentrl_grpc_server_in_flight_requests", labels)] == 0.0


def test_two_servers_share_the_default_registry(start_server, channels):
    def ok_calls() -> float:
        value = prometheus_client.REGISTRY.get_sample_value(
            "agentrl_grpc_server_requests_total",
            {"grpc_service": TRAINER_SERVICE, "grpc_method": "GetStatus", "grpc_code": "OK"},
        )
        return value or 0.0

    before = ok_calls()
    for _ in range(2):  # the second server must not raise "Duplicated timeseries"
        server = start_server(StatusServicer())
        trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address)).GetStatus(REQUEST)
    assert ok_calls() == before + 2


def test_each_call_is_logged_with_method_code_duration_and_peer(start_server, channels, caplog):
    servicer = StatusServicer(failures=[grpc.StatusCode.NOT_FOUND])
    server = start_server(servicer)
    stub = trainer_pb2_grpc.TrainerStatusServiceStub(channels(server.address))
    caplog.set_level(logging.DEBUG, logger="agentrl.common.grpc_server")
    with pytest.raises(grpc.RpcError):
        stub.GetStatus(REQUEST)
    stub.GetStatus(REQUEST, metadata=(("x-request-id", "req-42"),))
    stub.GetStatus(REQUEST)  # the method's handler is wrapped once: no id left over from the last

    calls = [r for r in caplog.records if getattr(r, "method", None) == GET_STATUS]
    assert [(r.code, r.levelno) for r in calls] == [
        ("NOT_FOUND", logging.WARNING),
        ("OK", logging.DEBUG),
        ("OK", logging.DEBUG),
    ]
    for record in calls:
        assert record.duration_s >= 0
        assert record.peer.startswith("ipv4:127.0.0.1:")
    assert servicer.contexts[-2].get("request_id") == "req-42"
    assert "request_id" not in servicer.contexts[0]
    assert "request_id" not in servicer.contexts[-1]
