"""The sandbox service end to end: real gRPC and HTTP servers on 127.0.0.1, real bwrap."""

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry
from sandbox_service_helpers import serve_sandbox

from agentrl.common.config import SandboxConfig
from agentrl.common.http import serve_in_thread
from agentrl.proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from agentrl.sandbox.client import SandboxClient, SandboxOverloaded
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.http_api import create_sandbox_app
from agentrl.sandbox.interface import ExecutionRequest, Status

# bubblewrap is installed by scripts/setup.sh: a missing one must fail the suite, not skip it.


class Stack:
    def __init__(self, **overrides):
        config = SandboxConfig(**{"max_concurrency": 4, "queue_size": 300, **overrides})
        self.registry = CollectorRegistry()
        self.sandbox = Sandbox(config, registry=self.registry)
        self.serving = ExitStack()
        self.grpc = self.serving.enter_context(
            serve_sandbox(
                self.sandbox,
                max_workers=config.max_concurrency + config.queue_size + 8,
                registry=self.registry,
            )
        )
        app = create_sandbox_app(self.sandbox, token=None, registry=self.registry)
        self.http = serve_in_thread(app)
        self.client = SandboxClient(self.grpc.address, token=None)
        self.channel = grpc.insecure_channel(self.grpc.address)
        self.stub = sandbox_pb2_grpc.SandboxServiceStub(self.channel)

    def close(self):
        self.client.close()
        self.channel.close()
        self.http.stop()
        self.serving.close()  # the gRPC server, then its servicer
        self.sandbox.close()


@pytest.fixture(scope="module")
def stack():
    stack = Stack()
    yield stack
    stack.close()


def test_execute_over_grpc(stack):
    result = stack.client.execute("print(input())", stdin=b"hello\n", request_id="r1")
    assert (result.status, result.stdout, result.request_id) == (Status.OK, "hello\n", "r1")
    reply = stack.stub.Execute(sandbox_pb2.ExecuteRequest(code="import sys; sys.exit(2)"))
    assert reply.status == sandbox_pb2.EXECUTION_STATUS_ERROR and reply.exit_code == 2
    assert reply.backend == "bwrap" and reply.wall_time_s > 0


def test_cpp_over_grpc_with_its_compile_timeout(stack):
    source = "#include <bits/stdc++.h>\nint main(){ std::cout << 42; }"
    ran = stack.client.execute(source, language="cpp", compile_timeout_s=60)
    assert (ran.status, ran.stdout) == (Status.OK, "42"), ran
    cut = stack.client.execute(source, language="cpp", compile_timeout_s=0.05, timeout_s=30)
    assert cut.status == Status.TIMEOUT and "compile step" in cut.message, cut


def test_batch_keeps_order_and_stream_returns_all(stack):
    requests = [ExecutionRequest(code=f"print({i})", request_id=str(i)) for i in range(12)]
    assert [r.stdout for r in stack.client.execute_batch(requests)] == [f"{i}\n" for i in range(12)]
    streamed = {r.request_id: r.stdout for r in stack.client.execute_stream(iter(requests))}
    assert streamed == {str(i): f"{i}\n" for i in range(12)}


def test_sandbox_cannot_reach_the_service_ports(stack):
    for port in (stack.grpc.port, stack.http.port):
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)"
        result = stack.client.execute(code)
        assert result.status == Status.ERROR and "ConnectionRefusedError" in result.stderr


def test_session_keeps_state_across_three_calls(stack):
    sid = "trajectory-1"
    first = stack.client.execute("import math\ncount = 1", session_id=sid)
    second = stack.client.execute("count += 1\nmath.sqrt(16)", session_id=sid)
    third = stack.client.execute("print(count)", session_id=sid)
    assert [r.status for r in (first, second, third)] == [Status.OK] * 3
    assert second.stdout == "4.0\n" and third.stdout == "2\n"
    crashed = stack.client.execute("import os; os._exit(1)", session_id=sid)
    assert crashed.status == Status.ERROR and "state was lost" in crashed.message
    fresh = stack.client.execute("print('count' in globals())", session_id=sid)
    assert fresh.stdout == "False\n"
    assert stack.client.close_session(sid) is True
    assert stack.client.close_session(sid) is False


def test_run_code_sandbox_fusion_compatible(stack):
    body = {
        "code": "import sys\ndata = open('in.txt').read()\nprint(data + input())\n"
        "open('out.bin', 'wb').write(b'\\x00\\xff')",
        "language": "python",
        "run_timeout": 5,
        "memory_limit_MB": 256,
        "stdin": "!",
        "files": {"in.txt": base64.b64encode(b"hi").decode()},
        "fetch_files": ["out.bin"],
    }
    reply = httpx.post(f"{stack.http.url}/run_code", json=body, timeout=30)
    assert reply.status_code == 200
    data = reply.json()
    assert data["status"] == "Success" and data["message"] == ""
    assert data["compile_result"] is None and "executor_pod_name" in data
    run = data["run_result"]
    assert run["status"] == "Finished" and run["return_code"] == 0
    assert run["stdout"] == "hi!\n" and run["stderr"] == "" and run["execution_time"] > 0
    assert base64.b64decode(data["files"]["out.bin"]) == b"\x00\xff"
    timeout = httpx.post(
        f"{stack.http.url}/run_code",
        json={"code": "while True: pass", "language": "python", "run_timeout": 1},
        timeout=30,
    ).json()
    assert timeout["status"] == "Failed"
    assert timeout["run_result"]["status"] == "TimeLimitExceeded"
    failed = httpx.post(
        f"{stack.http.url}/run_code", json={"code": "1/0", "language": "python"}, timeout=30
    ).json()
    assert failed["status"] == "Failed" and failed["run_result"]["return_code"] == 1
    unknown = httpx.post(
        f"{stack.http.url}/run_code", json={"code": "x", "language": "cobol"}, timeout=30
    )
    assert unknown.status_code == 422 and "does not run 'cobol'" in unknown.text


def test_large_output_up_to_the_cap_is_whole_and_flagged_beyond(stack):
    cap = stack.sandbox.config.max_output_bytes
    whole = httpx.post(
        f"{stack.http.url}/run_code",
        json={"code": f"print('x' * {cap - 1})", "language": "python"},
        timeout=30,
    ).json()
    assert whole["status"] == "Success" and len(whole["run_result"]["stdout"]) == cap
    over = httpx.post(
        f"{stack.http.url}/run_code",
        json={"code": f"print('x' * {cap * 10})", "language": "python"},
        timeout=30,
    ).json()
    assert over["status"] == "Failed" and over["message"].startswith("output_limit")
    assert len(over["run_result"]["stdout"]) == cap


def test_hostile_http_bodies(stack):
    url = f"{stack.http.url}/run_code"
    huge = b'{"code": "' + b"x" * (stack.sandbox.config.max_request_bytes * 2) + b'"}'
    assert httpx.post(url, content=huge, timeout=30).status_code == 413
    assert httpx.post(url, content=b'{"code": "\xff\xfe"}', timeout=30).status_code == 422
    assert httpx.post(url, content=b"not json", timeout=30).status_code == 422
    assert httpx.post(url, json={"language": "python"}, timeout=30).status_code == 422
    assert httpx.get(f"{stack.http.url}/healthz").status_code == 200
    assert httpx.get(f"{stack.http.url}/readyz").status_code == 200


def test_metrics_exported(stack):
    stack.client.execute("print(1)")
    text = httpx.get(f"{stack.http.url}/metrics").text
    assert 'agentrl_sandbox_executions_total{backend="bwrap",status="ok"}' in text
    for name in (
        "agentrl_sandbox_request_duration_seconds_bucket",
        "agentrl_sandbox_queue_depth",
        "agentrl_sandbox_in_flight_requests",
        "agentrl_sandbox_pool_size_sandboxes",
        "agentrl_sandbox_sessions_sessions",
    ):
        assert name in text, name


def test_overload_answers_resource_exhausted_and_429_with_retry_after():
    stack = Stack(max_concurrency=1, queue_size=0)
    try:
        holder = threading.Thread(target=stack.client.execute, args=("import time; time.sleep(2)",))
        holder.start()
        deadline = time.monotonic() + 5
        while stack.sandbox.admission.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as refused:
            stack.stub.Execute(sandbox_pb2.ExecuteRequest(code="print(1)"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert any(
            k == "retry-after-s" and float(v) > 0 for k, v in refused.value.trailing_metadata()
        )
        reply = httpx.post(
            f"{stack.http.url}/run_code", json={"code": "print(1)", "language": "python"}, timeout=5
        )
        assert reply.status_code == 429 and int(reply.headers["retry-after"]) >= 1
        impatient = SandboxClient(stack.grpc.address, token=None, max_overload_retries=0)
        with pytest.raises(SandboxOverloaded):
            impatient.execute("print(1)")
        impatient.close()
        holder.join(10)
        # The client waits out the hint and succeeds once the replica has room.
        assert stack.client.execute("print(1)").status == Status.OK
    finally:
        stack.close()


def _post_run_code(stack, code, timeout_s=60):
    body = {"code": code, "language": "python", "run_timeout": 30}
    return httpx.post(f"{stack.http.url}/run_code", json=body, timeout=timeout_s)


def _hold_the_only_place(stack, seconds):
    """Start a run that sleeps `seconds` in the replica's only place; its thread."""
    holder = threading.Thread(
        target=_post_run_code, args=(stack, f"import time; time.sleep({seconds})")
    )
    holder.start()
    deadline = time.monotonic() + 30
    while stack.sandbox.admission.in_flight < 1:
        assert time.monotonic() < deadline, "the holding run was never admitted"
        time.sleep(0.01)
    return holder


def test_a_queued_request_waits_for_a_place_that_frees_in_time():
    """Full (one place, taken) but the place frees long before queue_timeout_s: the queued
    request runs, no 429."""
    stack = Stack(max_concurrency=1, queue_size=4, queue_timeout_s=120)
    try:
        holder = _hold_the_only_place(stack, 1)
        reply = _post_run_code(stack, "print(1)", timeout_s=180)
        assert reply.status_code == 200 and reply.json()["run_result"]["stdout"] == "1\n"
        holder.join(60)
    finally:
        stack.close()


def test_a_queued_request_gets_429_with_retry_after_at_queue_timeout():
    """The only place is held far past queue_timeout_s (1 s): the queued request is answered
    429 with Retry-After once it has waited that long, not at once (the queue had room)."""
    stack = Stack(max_concurrency=1, queue_size=4, queue_timeout_s=1)
    try:
        holder = _hold_the_only_place(stack, 20)
        begin = time.monotonic()
        reply = _post_run_code(stack, "print(1)")
        waited_s = time.monotonic() - begin
        assert reply.status_code == 429 and int(reply.headers["retry-after"]) >= 1, reply.text
        assert "queue_timeout_s" in reply.text and waited_s >= 1
        assert stack.sandbox.admission.waiting == 0
        holder.join(60)
    finally:
        stack.close()


def test_drain_refuses_new_work_and_not_ready():
    stack = Stack(max_concurrency=1)
    try:
        stack.sandbox.begin_drain()
        assert httpx.get(f"{stack.http.url}/readyz").status_code == 503
        reply = httpx.post(
            f"{stack.http.url}/run_code", json={"code": "print(1)", "language": "python"}, timeout=5
        )
        assert reply.status_code == 503
        with pytest.raises(grpc.RpcError) as refused:
            stack.stub.Execute(sandbox_pb2.ExecuteRequest(code="print(1)"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stack.close()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_main_serves_until_sigterm_and_drains():
    grpc_port, http_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "AGENTRL__SANDBOX__GRPC_PORT": str(grpc_port),
        "AGENTRL__SANDBOX__HTTP_PORT": str(http_port),
        "AGENTRL__SANDBOX__MAX_CONCURRENCY": "2",
    }
    code = (
        "from agentrl.common.config import load_config\n"
        "from agentrl.sandbox.main import main\nmain(load_config())"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with SandboxClient(f"127.0.0.1:{grpc_port}", token=None) as client:
            slow = threading.Thread(
                target=lambda: results.append(
                    client.execute("import time; time.sleep(1); print('done')")
                )
            )
            results = []
            slow.start()
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            slow.join(15)
        assert results and results[0].stdout == "done\n"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
