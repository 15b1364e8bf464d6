"""`Sandbox`: what the gRPC and HTTP front ends call. Validation, admission, backend, metrics.

One `Sandbox` per replica owns the backend chosen in config (a plain dict, no registry), the
admission control, the session manager and the metrics. `execute` never raises for anything a
request or its program does: invalid requests come back `rejected`, backend failures
`sandbox_error`. It raises only `Overloaded` / `Draining` (agentrl.sandbox.admission), which
the front ends turn into RESOURCE_EXHAUSTED / 429 and UNAVAILABLE / 503.

What this module does NOT cover: isolation (the backends) and authentication (the servers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger, log_context
from agentrl.sandbox.admission import Admission, Draining, Overloaded
from agentrl.sandbox.enforcement import report
from agentrl.sandbox.interface import (
    Backend,
    ExecutionRequest,
    ExecutionResult,
    RequestRejected,
    Status,
)
from agentrl.sandbox.limits import resolve_request
from agentrl.sandbox.metrics import SandboxMetrics

log = get_logger(__name__)


def _bwrap(config: SandboxConfig) -> Backend:
    from agentrl.sandbox.bwrap import BwrapBackend

    return BwrapBackend(config)


def _docker(config: SandboxConfig) -> Backend:
    from agentrl.sandbox.docker_backend import DockerBackend

    return DockerBackend(config)


BACKENDS: dict[str, Callable[[SandboxConfig], Backend]] = {"bwrap": _bwrap, "docker": _docker}


class Sandbox:
    """The sandbox of one replica."""

    def __init__(
        self,
        config: SandboxConfig,
        backend: Backend | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.backend = backend or BACKENDS[config.backend](config)
        self.admission = Admission(
            config.max_concurrency, config.queue_size, config.queue_timeout_s
        )
        self.sessions = None
        if hasattr(self.backend, "make_sessions"):  # docker
            self.sessions = self.backend.make_sessions()
        elif hasattr(self.backend, "make_slot"):
            from agentrl.sandbox.sessions import SessionManager

            self.sessions = SessionManager(self.backend, config)
        self.limits = report(self.backend.name, self.backend.limits())
        """Each limit with how it is enforced or why not (served in /readyz)."""
        self.metrics = SandboxMetrics.create(registry)
        self.metrics.watch(
            self.backend.name,
            queue_depth=lambda: self.admission.waiting,
            in_flight=lambda: self.admission.in_flight,
            pool_size=self.backend.pool_size,
            sessions=lambda: self.sessions.count() if self.sessions else 0,
        )
        if self.sessions is not None:
            self.sessions.on_evict = lambda reason: self.metrics.session_evictions.labels(
                reason=reason
            ).inc()
            self.metrics.session_memory_reserved.set_function(
                lambda: self.sessions.reserved_mb() << 20
            )
        if hasattr(self.backend, "on_recycle"):
            self.backend.on_recycle = lambda reason: self.metrics.recycles.labels(
                backend=self.backend.name, reason=reason
            ).inc()

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        """Run one request; raises only Overloaded or Draining."""
        arrived = time.monotonic()
        with log_context(request_id=request.request_id or "-"):
            try:
                resolved = resolve_request(request, self.config)
                if resolved.session_id and self.sessions is None:
                    raise RequestRejected(
                        f"this replica's {self.backend.name} backend has no sessions; send the "
                        "request without a session_id, or to a bwrap or docker replica"
                    )
                if resolved.session_id and resolved.language != "python":
                    raise RequestRejected(
                        f"sessions run python; send {resolved.language} without a session_id"
                    )
            except RequestRejected as exc:
                self.metrics.refusals.labels(reason="invalid").inc()
                return self._finish(
                    ExecutionResult(
                        Status.REJECTED,
                        message=str(exc),
                        backend=self.backend.name,
                        request_id=request.request_id,
                    ),
                    arrived,
                )
            try:
                with self.admission.slot():
                    result = self._run(resolved)
            except Overloaded:
                self.metrics.refusals.labels(reason="overloaded").inc()
                raise
            except Draining:
                self.metrics.refusals.labels(reason="draining").inc()
                raise
            return self._finish(result, arrived)

    def _run(self, request: ExecutionRequest) -> ExecutionResult:
        try:
            if request.session_id:
                return self.sessions.execute(request)
            return self.backend.execute(request)
        except RequestRejected as exc:
            return ExecutionResult(
                Status.REJECTED,
                message=str(exc),
                backend=self.backend.name,
                request_id=request.request_id,
            )
        except Exception as exc:
            log.exception("backend failed")
            return ExecutionResult(
                Status.SANDBOX_ERROR,
                message=f"sandbox failure: {type(exc).__name__}: {exc}",
                backend=self.backend.name,
                request_id=request.request_id,
            )

    def _finish(self, result: ExecutionResult, arrived: float) -> ExecutionResult:
        backend = self.backend.name
        self.metrics.executions.labels(status=result.status.value, backend=backend).inc()
        if result.status not in (Status.REJECTED,):
            self.metrics.execution_duration.labels(backend=backend).observe(result.wall_time_s)
        self.metrics.request_duration.labels(backend=backend).observe(time.monotonic() - arrived)
        return result

    def close_session(self, session_id: str) -> bool:
        return self.sessions.close(session_id) if self.sessions else False

    def ready(self) -> bool:
        return not self.admission.draining and self.backend.ready()

    def begin_drain(self) -> None:
        self.admission.begin_drain()

    def close(self) -> None:
        if self.sessions is not None:
            self.sessions.close_all()
        self.backend.close()
