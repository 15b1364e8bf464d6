"""The sandbox's HTTP app: agentrl.common.http's probes and metrics plus SandboxFusion's
`POST /run_code` (agentrl.sandbox.sandbox_fusion).

Answers: 200 with a SandboxFusion body for every program that ran (whatever it did) and for a
sandbox failure (`SandboxError`); 413 for a body over `max_request_bytes` (checked while
reading, before parsing); 422 in FastAPI's `{"detail": [{type, loc, msg}]}` shape for a body that
is not the schema (non-UTF-8, non-JSON, a missing `language`, a language not run here) and for
a request the sandbox refuses to run (bad base64 or paths, memory below 16 MB...): SandboxFusion's
clients log or raise on a non-2xx answer, where verl scores a 200 `SandboxError` -1 without a
word; 429 with `Retry-After` when the replica is full; 503 while it drains.

Executions run in worker threads capped at max_concurrency + queue_size, so admission (not the
thread pool) decides who waits and who gets 429.

What this module does NOT cover: TLS; authentication beyond agentrl.common.auth's shared token.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from agentrl.common import auth
from agentrl.common.http import create_app
from agentrl.sandbox.admission import Draining, Overloaded
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import RequestRejected, Status
from agentrl.sandbox.sandbox_fusion import RunCodeRequest, RunCodeResponse, to_request, to_response

# JSON and base64 add overhead around the raw bytes max_request_bytes bounds (base64: 4/3).
BODY_OVERHEAD_FACTOR = 1.5


def create_sandbox_app(
    sandbox: Sandbox, *, token: Any = auth.FROM_ENV, registry: CollectorRegistry | None = None
) -> FastAPI:
    """The FastAPI app of one replica (`token`, `registry` as in agentrl.common.http)."""
    app = create_app(
        "sandbox",
        ready=sandbox.ready,
        token=token,
        registry=registry,
        details=lambda: {"backend": sandbox.backend.name, "limits": sandbox.limits},
    )
    max_body_bytes = int(sandbox.config.max_request_bytes * BODY_OVERHEAD_FACTOR) + 4096
    limiter = anyio.CapacityLimiter(sandbox.config.max_concurrency + sandbox.config.queue_size)

    @app.post("/run_code", response_model=RunCodeResponse)
    async def run_code(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _too_large(max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _too_large(max_body_bytes)
        try:
            parsed = RunCodeRequest.model_validate_json(bytes(body))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            # FastAPI's own validation answers locate fields under "body".
            return JSONResponse(
                {"detail": [{**error, "loc": ["body", *error["loc"]]} for error in errors]},
                status_code=422,
            )
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            execution, clamped = to_request(parsed, sandbox.config, request_id)
        except RequestRejected as exc:
            return _refused(str(exc))
        try:
            result = await anyio.to_thread.run_sync(sandbox.execute, execution, limiter=limiter)
        except Overloaded as exc:
            return JSONResponse(
                {"detail": f"sandbox overloaded: {exc}"},
                status_code=429,
                headers={"Retry-After": exc.retry_after_header()},
            )
        except Draining as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        if result.status == Status.REJECTED:
            return _refused(result.message)
        return JSONResponse(to_response(result, clamped, parsed.fetch_files).to_json())

    return app


def _refused(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"type": "value_error", "loc": ["body"], "msg": f"rejected: {message}"}]},
        status_code=422,
    )


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"request body over {limit} bytes (max_request_bytes)"}, status_code=413
    )
