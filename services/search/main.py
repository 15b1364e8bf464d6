"""Entrypoint of the search service (`agentrl serve search`): gRPC + HTTP until SIGTERM.

Order: parse config (done by the caller), start both servers with health NOT_SERVING and
/readyz 503, open the index directories (seconds for a large index: the arrays are memory-
mapped, the dense model loads), then report SERVING. SIGTERM/SIGINT drain in-flight requests
(agentrl.common.grpc_server) and stop the HTTP server. With `search.workers` > 1 this process
only supervises that many worker processes on the same ports (workers.py).

`start_search_service` does the same without blocking and returns a handle; tests use it to run
the real servers on free ports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.common import auth
from agentrl.common.config import AgentRLConfig, SearchConfig

if TYPE_CHECKING:  # heavy modules load after the config is parsed
    from agentrl.common.grpc_server import GrpcServer
    from agentrl.common.http import BackgroundHttpServer
    from agentrl.search.engine import SearchEngine

log = logging.getLogger(__name__)

# gRPC threads beyond the request limit, so health checks get a thread under full load.
SPARE_GRPC_WORKERS = 4


@dataclass
class RunningSearchService:
    """Both servers of one replica and the engine behind them."""

    engine: SearchEngine
    grpc_server: GrpcServer
    http_server: BackgroundHttpServer

    @property
    def grpc_address(self) -> str:
        return self.grpc_server.address

    @property
    def http_url(self) -> str:
        return self.http_server.url

    def stop(self, grace_s: float | None = None) -> None:
        self.grpc_server.stop(grace_s)
        self.http_server.stop()


def start_search_service(
    config: SearchConfig,
    *,
    load: bool = True,
    registry: Any = None,
    token: Any = auth.FROM_ENV,
    reuse_port: bool = False,
) -> RunningSearchService:
    """Start gRPC and HTTP servers for `config`; `load=False` leaves loading to the caller.

    registry: Prometheus registry for the service's metrics (default: the global one).
    token: the shared auth token (default: from the environment; None turns auth off).
    reuse_port: one of several workers on the same ports (workers.py): the index is opened
        BEFORE the servers bind, so the kernel hands connections only to workers that can
        answer (requires `load`).
    """
    from agentrl.common.grpc_server import serve
    from agentrl.common.http import serve_in_thread
    from agentrl.search.engine import SearchEngine
    from agentrl.search.http_api import create_search_app
    from agentrl.search.service_metrics import SearchMetrics
    from agentrl.search.servicer import SERVICE_NAME, registration

    engine = SearchEngine(config, SearchMetrics(registry))
    if reuse_port:
        if not load:
            raise ValueError("reuse_port needs load=True: a worker binds once its index is open")
        engine.load_from_config()
    grpc_server = serve(
        registration(engine),
        [SERVICE_NAME],
        host=config.host,
        port=config.grpc_port,
        max_workers=config.max_concurrency + SPARE_GRPC_WORKERS,
        token=token,
        registry=registry,
        options=[("grpc.so_reuseport", 1)] if reuse_port else (),
    )
    grpc_server.set_serving(reuse_port)
    try:
        app = create_search_app(engine, token=token, registry=registry)
        http_server = serve_in_thread(
            app, host=config.host, port=config.http_port, reuse_port=reuse_port
        )
    except BaseException:
        grpc_server.stop(0)
        raise
    service = RunningSearchService(engine, grpc_server, http_server)
    if load and not reuse_port:
        try:
            load_indexes(service)
        except BaseException:
            service.stop(0)
            raise
    return service


def load_indexes(service: RunningSearchService) -> None:
    """Open the configured indexes, then report SERVING."""
    service.engine.load_from_config()
    service.grpc_server.set_serving(True)
    for index in service.engine.indexes.values():
        log.info(
            "index loaded",
            extra={
                "index": index.name,
                "version": index.version,
                "passages": index.num_passages,
                "methods": list(index.methods),
            },
        )


def main(config: AgentRLConfig) -> None:
    """Serve search until SIGTERM/SIGINT (logging is set up by `agentrl serve`); with
    `search.workers` > 1 (or auto) this process supervises that many workers (workers.py)."""
    from agentrl.search.workers import resolve_workers, run_workers

    num_workers = resolve_workers(config.search)
    if num_workers > 1:
        run_workers(config.search, num_workers)
        return
    service = start_search_service(config.search, load=False)
    service.grpc_server.install_signal_handlers()
    try:
        try:
            load_indexes(service)
        except ValueError as exc:  # no index, a damaged one: say what to run, no traceback
            log.error("cannot open the search index: %s", exc)
            raise SystemExit(f"search: {exc}") from None
        log.info(
            "search service ready",
            extra={"grpc": service.grpc_address, "http": service.http_url},
        )
        service.grpc_server.wait()
    finally:
        service.stop(0)
