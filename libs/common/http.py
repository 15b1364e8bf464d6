"""The HTTP side of every AgentRL service: a FastAPI app with probes and metrics, run by uvicorn.

`create_app(service, ready=...)` returns a FastAPI app with
- `GET /healthz`: liveness, 200 while the process serves HTTP at all;
- `GET /readyz`: readiness, 200 when `ready()` returns True, else 503 (also when it raises);
- `GET /metrics`: the Prometheus text exposition (see agentrl.common.metrics);
- `agentrl.common.auth.BearerAuthMiddleware` when a token is configured (probes and, by
  default, `/metrics` stay open).
Services add their own routes to it (e.g. the sandbox's `POST /run_code`).

`serve_in_thread(app, port=0)` runs it with uvicorn in a background thread on 127.0.0.1 (port 0:
a free one) and returns a handle with `.port`, `.url`, `.stop()`; entrypoints that only serve
HTTP can call `uvicorn.run` themselves.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from agentrl.common import auth, metrics

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# uvicorn starts in well under a second; a slow CI machine still fits.
STARTUP_TIMEOUT_S = 10.0


def create_app(
    service: str,
    *,
    ready: Callable[[], bool] | None = None,
    token: str | None | Any = auth.FROM_ENV,
    metrics_public: bool = True,
    registry: CollectorRegistry | None = None,
    details: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """A FastAPI app for `service` with /healthz, /readyz, /metrics and auth when configured.

    ready: readiness check (default: always ready once serving).
    details: extra fields of every /readyz body (e.g. which limits a sandbox enforces).
    token: the shared auth token; default `auth.load_token()`, None turns auth off.
    metrics_public: serve /metrics without the token (Prometheus scrapes carry none).
    registry: the Prometheus registry /metrics exposes (default: the global one).
    """
    app = FastAPI(title=f"agentrl-{service}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        extra = details() if details is not None else {}
        if ready is None:
            return JSONResponse({"status": "ready", "service": service, **extra})
        try:
            is_ready = bool(ready())
            reason = "" if is_ready else "not ready"
        except Exception as exc:  # noqa: BLE001 - a failing check means "not ready", not a 500
            is_ready, reason = False, f"readiness check failed: {exc}"
        if is_ready:
            return JSONResponse({"status": "ready", "service": service, **extra})
        return JSONResponse(
            {"status": "not_ready", "service": service, "reason": reason, **extra},
            status_code=503,
        )

    @app.get(auth.METRICS_PATH)
    def prometheus_metrics() -> Response:
        body, content_type = metrics.metrics_response(registry)
        return Response(content=body, media_type=content_type)

    token = auth.resolve_token(token)
    if token is not None:
        app.add_middleware(auth.BearerAuthMiddleware, token=token, metrics_public=metrics_public)
    return app


class BackgroundHttpServer:
    """A uvicorn server running in a daemon thread; `stop()` ends it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int):
        self._server = server
        self._thread = thread
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let running requests finish (up to `timeout_s`), join the thread."""
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    app: Any,
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    log_level: str = "warning",
    reuse_port: bool = False,
) -> BackgroundHttpServer:
    """Run `app` with uvicorn on host:port (port 0: a free port) in a daemon thread.

    reuse_port: set SO_REUSEPORT, so several processes listen on one port and the kernel
    spreads connections over them (search.workers).

    Returns once the server accepts connections; raises OSError when the address cannot be bound
    and RuntimeError when uvicorn does not start within STARTUP_TIMEOUT_S.
    """
    # Bind here so port 0 resolves to a real port before uvicorn starts, and a port in use fails
    # in the caller's thread instead of inside uvicorn's.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    # uvicorn's access log would repeat every probe and scrape; services log what matters.
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"http-{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"uvicorn exited during startup on {host}:{bound_port}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.01)
    log.info("HTTP server listening", extra={"address": f"{host}:{bound_port}"})
    return BackgroundHttpServer(server, thread, host, bound_port)
