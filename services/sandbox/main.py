"""Entry point of the sandbox service: `agentrl serve sandbox` calls `main(config)`.

Parse config (done by the caller), then import the heavy parts, then serve gRPC
(`SandboxService` + health + reflection) and HTTP (`/run_code`, `/healthz`, `/readyz`,
`/metrics`) on `config.sandbox.host` (127.0.0.1 unless configured) until SIGTERM or SIGINT.
Shutdown drains: readiness turns 503 and new executions are refused (UNAVAILABLE / 503) while
running and queued ones finish (up to the gRPC grace period), then sandboxes are torn down.

What this does NOT cover: isolation (the backends) and TLS (put a mesh or proxy in front when
the ports leave loopback).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from agentrl.common.config import AgentRLConfig

# Threads serving gRPC beyond the executions: health checks, reflection, CloseSession.
EXTRA_GRPC_WORKERS = 8


def main(config: AgentRLConfig) -> None:
    """Serve the sandbox until SIGTERM/SIGINT, then drain and exit."""
    from agentrl.common.grpc_server import serve
    from agentrl.common.http import serve_in_thread
    from agentrl.common.logging import get_logger, setup_logging
    from agentrl.common.shutdown import install_shutdown_handler
    from agentrl.sandbox.executor import Sandbox
    from agentrl.sandbox.http_api import create_sandbox_app
    from agentrl.sandbox.servicer import SERVICE_NAME, SandboxServicer, register

    setup_logging("sandbox")
    log = get_logger("agentrl.sandbox.main")
    settings = config.sandbox
    sandbox = Sandbox(settings)
    servicer = SandboxServicer(sandbox)
    grpc_server = serve(
        register(servicer),
        [SERVICE_NAME],
        host=settings.host,
        port=settings.grpc_port,
        # Queued requests hold a worker while they wait; admission must refuse before the
        # pool runs dry, or health checks would starve.
        max_workers=settings.max_concurrency + settings.queue_size + EXTRA_GRPC_WORKERS,
    )
    http_server = serve_in_thread(
        create_sandbox_app(sandbox), host=settings.host, port=settings.http_port
    )
    log.info(
        "sandbox serving",
        extra={"backend": settings.backend, "grpc": grpc_server.address, "http": http_server.url},
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        sandbox.begin_drain()
        threading.Thread(target=grpc_server.stop, name="sandbox-stop", daemon=True).start()

    previous = install_shutdown_handler(on_signal)
    try:
        grpc_server.wait()
        sandbox.admission.wait_idle(timeout_s=5.0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        http_server.stop()
        servicer.close()
        sandbox.close()
        log.info("sandbox stopped")
