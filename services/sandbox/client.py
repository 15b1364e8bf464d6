"""A small client of the sandbox service for other services (reward, rollout) and scripts.

    with SandboxClient("127.0.0.1:50051") as sandbox:
        result = sandbox.execute("print(1)", timeout_s=5)
        assert result.status == Status.OK

It speaks gRPC through agentrl.common.grpc_client (auth token, deadlines, retries on
UNAVAILABLE; with `outage=grpc_client.outage_for("sandbox", config.sandbox)` those retries
follow the shared policy until `sandbox.reconnect_deadline_s`). When the replica is full (RESOURCE_EXHAUSTED) it waits the server's retry-after
hint and tries again, at most `max_overload_retries` times, then raises `SandboxOverloaded`.

What this module does NOT cover: load balancing across replicas (give it a balanced address,
e.g. a Kubernetes Service or a `dns:///` target).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Self

import grpc

from agentrl.common import auth
from agentrl.common.grpc_client import create_channel
from agentrl.common.retry import Outage
from agentrl.proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult, Status
from agentrl.sandbox.servicer import RETRY_AFTER_KEY

# The call deadline is the program's timeout plus this margin for queueing and transport.
DEADLINE_MARGIN_S = 30.0
DEFAULT_OVERLOAD_RETRIES = 5


class SandboxOverloaded(RuntimeError):
    """The replica stayed full through every retry."""


def to_proto(request: ExecutionRequest) -> sandbox_pb2.ExecuteRequest:
    return sandbox_pb2.ExecuteRequest(
        code=request.code,
        language=request.language,
        stdin=request.stdin,
        files=request.files,
        fetch_files=request.fetch_files,
        timeout_s=request.timeout_s,
        memory_mb=request.memory_mb,
        compile_timeout_s=request.compile_timeout_s,
        session_id=request.session_id,
        request_id=request.request_id,
    )


def from_proto(message: sandbox_pb2.ExecuteResponse) -> ExecutionResult:
    name = sandbox_pb2.ExecutionStatus.Name(message.status).removeprefix("EXECUTION_STATUS_")
    return ExecutionResult(
        status=Status[name] if name in Status.__members__ else Status.SANDBOX_ERROR,
        exit_code=message.exit_code,
        stdout=message.stdout,
        stderr=message.stderr,
        stdout_truncated=message.stdout_truncated,
        stderr_truncated=message.stderr_truncated,
        wall_time_s=message.wall_time_s,
        cpu_time_s=message.cpu_time_s,
        peak_memory_mb=message.peak_memory_mb,
        files=dict(message.files),
        message=message.message,
        backend=message.backend,
        request_id=message.request_id,
    )


class SandboxClient:
    def __init__(
        self,
        target: str,
        *,
        token: Any = auth.FROM_ENV,
        max_overload_retries: int = DEFAULT_OVERLOAD_RETRIES,
        outage: Outage | None = None,
    ) -> None:
        self.channel = create_channel(target, token=token, default_timeout_s=None, outage=outage)
        self.stub = sandbox_pb2_grpc.SandboxServiceStub(self.channel)
        self.max_overload_retries = max_overload_retries

    def execute(self, code: str, **fields: Any) -> ExecutionResult:
        """Run `code`; `fields` are ExecutionRequest fields (language, stdin, timeout_s...)."""
        return self.execute_request(ExecutionRequest(code=code, **fields))

    def execute_request(self, request: ExecutionRequest) -> ExecutionResult:
        deadline_s = (request.timeout_s or 60.0) + DEADLINE_MARGIN_S
        for attempt in range(self.max_overload_retries + 1):
            try:
                return from_proto(self.stub.Execute(to_proto(request), timeout=deadline_s))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                if attempt == self.max_overload_retries:
                    raise SandboxOverloaded(exc.details()) from exc
                time.sleep(_retry_after_s(exc))
        raise AssertionError("unreachable")

    def execute_batch(
        self, requests: Iterable[ExecutionRequest], timeout_s: float | None = None
    ) -> list[ExecutionResult]:
        """Results in request order; overloaded items come back `rejected`."""
        batch = sandbox_pb2.ExecuteBatchRequest(requests=[to_proto(r) for r in requests])
        reply = self.stub.ExecuteBatch(batch, timeout=timeout_s)
        return [from_proto(r) for r in reply.responses]

    def execute_stream(self, requests: Iterable[ExecutionRequest]) -> Iterator[ExecutionResult]:
        """Results as they finish (match them by request_id)."""
        for message in self.stub.ExecuteStream(to_proto(r) for r in requests):
            yield from_proto(message)

    def close_session(self, session_id: str) -> bool:
        request = sandbox_pb2.CloseSessionRequest(session_id=session_id)
        return self.stub.CloseSession(request, timeout=DEADLINE_MARGIN_S).existed

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_after_s(error: BaseException) -> float:
    """The server's hint from trailing metadata (on the error or the gRPC error it wraps)."""
    for candidate in (error, error.__cause__):
        metadata = getattr(candidate, "trailing_metadata", None)
        for key, value in (metadata() if callable(metadata) else None) or ():
            if key == RETRY_AFTER_KEY:
                try:
                    return float(value)
                except ValueError:
                    break
    return 1.0
