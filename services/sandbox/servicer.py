"""gRPC `agentrl.sandbox.v1.SandboxService`: Execute, ExecuteBatch, ExecuteStream, CloseSession.

Every call goes through `Sandbox.execute` (validation, admission, backend, metrics). A full
replica answers RESOURCE_EXHAUSTED with trailing metadata `retry-after-s` (a float, seconds);
a draining one UNAVAILABLE, which agentrl.common.grpc_client retries on another attempt.
In a batch or a stream each item is admitted on its own: an item refused for overload comes
back with status `rejected` and a message that starts with "overloaded", so one full replica
never fails the other items.

What this module does NOT cover: authentication and TLS (agentrl.common.grpc_server, auth).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from agentrl.proto.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from agentrl.sandbox.admission import Draining, Overloaded
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult, Status

SERVICE_NAME = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name
RETRY_AFTER_KEY = "retry-after-s"


def request_from_proto(message: sandbox_pb2.ExecuteRequest) -> ExecutionRequest:
    return ExecutionRequest(
        code=message.code,
        language=message.language or "python",
        stdin=message.stdin,
        files=dict(message.files),
        fetch_files=list(message.fetch_files),
        timeout_s=message.timeout_s,
        memory_mb=message.memory_mb,
        compile_timeout_s=message.compile_timeout_s,
        session_id=message.session_id,
        request_id=message.request_id,
    )


def result_to_proto(result: ExecutionResult) -> sandbox_pb2.ExecuteResponse:
    return sandbox_pb2.ExecuteResponse(
        status=sandbox_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{result.status.name}"),
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        wall_time_s=result.wall_time_s,
        cpu_time_s=result.cpu_time_s,
        files=result.files,
        message=result.message,
        backend=result.backend,
        request_id=result.request_id,
        peak_memory_mb=result.peak_memory_mb,
    )


class SandboxServicer(sandbox_pb2_grpc.SandboxServiceServicer):
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        # Batch and stream items run here; admission bounds how many really execute at once.
        workers = sandbox.config.max_concurrency + sandbox.config.queue_size
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-item")

    def Execute(self, request, context):
        try:
            return result_to_proto(self.sandbox.execute(request_from_proto(request)))
        except Overloaded as exc:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, f"{exc.retry_after_s:.3f}"),))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"sandbox overloaded: {exc}; retry after {exc.retry_after_s:.2f} s",
            )
        except Draining as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    def _item(self, message: sandbox_pb2.ExecuteRequest) -> sandbox_pb2.ExecuteResponse:
        try:
            return result_to_proto(self.sandbox.execute(request_from_proto(message)))
        except (Overloaded, Draining) as exc:
            reason = "overloaded" if isinstance(exc, Overloaded) else "draining"
            return result_to_proto(
                ExecutionResult(
                    Status.REJECTED,
                    message=f"{reason}: {exc}",
                    backend=self.sandbox.backend.name,
                    request_id=message.request_id,
                )
            )

    def ExecuteBatch(self, request, context):
        futures = [self._pool.submit(self._item, item) for item in request.requests]
        return sandbox_pb2.ExecuteBatchResponse(responses=[f.result() for f in futures])

    def ExecuteStream(self, request_iterator, context):
        done: queue.Queue = queue.Queue()
        submitted = [0]
        finished_reading = threading.Event()

        def read() -> None:
            try:
                for item in request_iterator:
                    submitted[0] += 1
                    self._pool.submit(self._item, item).add_done_callback(
                        lambda f: done.put(f.result())
                    )
            finally:
                finished_reading.set()
                done.put(None)

        threading.Thread(target=read, name="sandbox-stream-reader", daemon=True).start()
        answered = 0
        while not (finished_reading.is_set() and answered == submitted[0]):
            item = done.get()
            if item is None:
                continue
            answered += 1
            yield item
            if not context.is_active():
                return

    def CloseSession(self, request, context):
        return sandbox_pb2.CloseSessionResponse(
            existed=self.sandbox.close_session(request.session_id)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def register(servicer: SandboxServicer) -> Callable[[grpc.Server], None]:
    """A registration callback for agentrl.common.grpc_server.serve."""
    return lambda server: sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(servicer, server)
