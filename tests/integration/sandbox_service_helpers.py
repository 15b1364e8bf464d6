"""A sandbox service in the test's own process: a real `Sandbox` behind the real servicer and
gRPC server on 127.0.0.1, auth off. Shared by the integration modules that call the sandbox
over gRPC (conftest.py's `services`, the reward, rollout, chat-template and sandbox modules);
each keeps its own settings (backend, limits, pool size, server threads).

Not covered: the service's HTTP API (test_sandbox_service.py starts it beside the gRPC
server) and its process, signals and draining (services/sandbox/main.py, run by `agentrl up`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from agentrl.common.config import SandboxConfig
from agentrl.common.grpc_server import GrpcServer, serve
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.servicer import SERVICE_NAME, SandboxServicer, register

# Threads of a test's gRPC server: a few calls in flight plus the health checks beside them.
MAX_WORKERS = 8


@contextmanager
def serve_sandbox(
    sandbox: Sandbox,
    *,
    port: int = 0,
    max_workers: int = MAX_WORKERS,
    registry: CollectorRegistry | None = None,
) -> Iterator[GrpcServer]:
    """`sandbox` answering gRPC on `port` (0: a free one) until the block ends; then the server
    stops and the servicer closes. The sandbox stays open: it is the caller's."""
    servicer = SandboxServicer(sandbox)
    server = serve(
        register(servicer),
        [SERVICE_NAME],
        port=port,
        token=None,
        max_workers=max_workers,
        registry=registry,
    )
    try:
        yield server
    finally:
        server.stop(0)
        servicer.close()


@contextmanager
def sandbox_server(
    config: SandboxConfig, *, port: int = 0, max_workers: int = MAX_WORKERS
) -> Iterator[GrpcServer]:
    """A `Sandbox` of `config` served as `serve_sandbox` does; closed after the server."""
    sandbox = Sandbox(config)
    try:
        with serve_sandbox(sandbox, port=port, max_workers=max_workers) as server:
            yield server
    finally:
        sandbox.close()
