"""Shared-token authentication between AgentRL services (gRPC and HTTP).

Every service of one deployment shares a single bearer token. It is read from the environment
(`AGENTRL_AUTH_TOKEN`) or from a mounted secret file (`AGENTRL_AUTH_TOKEN_FILE`, e.g. a
Kubernetes Secret volume), never from the repository or a recipe/config file, so it cannot be
committed by accident. `load_token()` returns it, or None when neither variable is set: then
authentication is off (the local `agentrl up` default, where services bind to loopback).

When a token is configured:
- gRPC: `AuthServerInterceptor` rejects every call whose `authorization` metadata is not
  `Bearer <token>` with UNAUTHENTICATED, except the health service (`/grpc.health.v1.Health/*`,
  so Kubernetes gRPC probes work) and server reflection (`/grpc.reflection.*`, schema only).
- HTTP: `BearerAuthMiddleware` (plain ASGI, wraps a FastAPI app) answers 401 to every request
  whose `Authorization` header is not `Bearer <token>`, except `/healthz` and `/readyz` (probes)
  and, by default, `/metrics`: Prometheus scrapes usually carry no credentials and the metrics
  hold counts and timings, not data. Pass `metrics_public=False` to require the token there too.
- Tokens are compared with `hmac.compare_digest` (constant time).

What this does NOT cover:
- Confidentiality: the token travels in clear text unless the transport is encrypted (TLS or a
  service mesh); on a shared network run behind one. This module configures no TLS.
- Authorization: one token for everything; no per-service identities, scopes or roles.
- Rotation: the token is read once when a server or channel is created; rotating it needs a
  restart of every service (no overlap window with two valid tokens).
- Brute force: failed attempts are rejected and logged, not rate limited or locked out.
- Unauthenticated surfaces by design: gRPC health and reflection, HTTP `/healthz`, `/readyz`,
  `/metrics` (unless `metrics_public=False`), and the standalone Prometheus server of
  `agentrl.common.metrics.start_metrics_server`, which has no auth at all.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "AGENTRL_AUTH_TOKEN"
TOKEN_FILE_ENV = "AGENTRL_AUTH_TOKEN_FILE"

# gRPC metadata keys are lower case on the wire; HTTP header names are case-insensitive.
AUTH_METADATA_KEY = "authorization"
BEARER_SCHEME = "bearer"

# Probes and schema discovery must work without the token (kubelet gRPC probes send none).
GRPC_EXEMPT_METHOD_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")
HTTP_PROBE_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"

log = logging.getLogger(__name__)


class _FromEnv:
    """Sentinel type: "read the token with load_token()" (distinct from None = no auth)."""

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV: Any = _FromEnv()
"""Default of every `token=` parameter in agentrl.common: use `load_token()`."""


def load_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The shared token from `AGENTRL_AUTH_TOKEN` or the file named by `AGENTRL_AUTH_TOKEN_FILE`.

    Returns None when neither is set (an empty value counts as unset). Raises ValueError when
    both are set, or the file is missing, unreadable, empty, or holds whitespace inside the token:
    a misconfigured secret must stop the service, not silently turn authentication off.
    """
    env = os.environ if environ is None else environ
    value = env.get(TOKEN_ENV, "")
    file_name = env.get(TOKEN_FILE_ENV, "")
    if value and file_name:
        raise ValueError(f"both {TOKEN_ENV} and {TOKEN_FILE_ENV} are set; set only one of them")
    if file_name:
        path = Path(file_name)
        try:
            # Secret files usually end with a newline; surrounding whitespace is never part of it.
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{TOKEN_FILE_ENV}={file_name}: cannot read the token file: {exc}")
        if not value:
            raise ValueError(f"{TOKEN_FILE_ENV}={file_name}: the token file is empty")
    if not value:
        return None
    return validate_token(value, source=TOKEN_FILE_ENV if file_name else TOKEN_ENV)


def validate_token(token: str, source: str = "token") -> str:
    """Return `token` if it can travel in a header (printable ASCII, no spaces), else ValueError."""
    if (
        not token
        or not token.isascii()
        or not token.isprintable()
        or any(c.isspace() for c in token)
    ):
        raise ValueError(
            f"{source}: the auth token must be non-empty printable ASCII without whitespace"
        )
    return token


def resolve_token(token: str | None | _FromEnv) -> str | None:
    """Turn a `token=` argument into the token to enforce: FROM_ENV reads `load_token()`."""
    if isinstance(token, _FromEnv):
        return load_token()
    if token is None:
        return None
    return validate_token(token)


def bearer(token: str) -> str:
    """The header/metadata value that carries `token`."""
    return f"Bearer {token}"


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying `token`."""
    return ((AUTH_METADATA_KEY, bearer(token)),)


def auth_headers(token: str | None) -> dict[str, str]:
    """HTTP headers carrying `token` (empty when auth is off), e.g. for an httpx client."""
    return {"Authorization": bearer(token)} if token else {}


def check_bearer(value: str | bytes | None, token: str) -> bool:
    """Whether an `authorization` value is `Bearer <token>` (scheme case-insensitive).

    The token part is compared in constant time, so response timing does not reveal how many
    leading characters of a guess were right.
    """
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, given = value.strip().partition(" ")
    if scheme.lower() != BEARER_SCHEME:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def is_exempt_grpc_method(
    method: str, prefixes: Iterable[str] = GRPC_EXEMPT_METHOD_PREFIXES
) -> bool:
    """Whether a full gRPC method name (`/pkg.Service/Method`) needs no token."""
    return any(method.startswith(prefix) for prefix in prefixes)


def _aborting_handler(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that fails every call with `code`."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_stream_rpc_method_handler(abort)


class AuthServerInterceptor(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` metadata with UNAUTHENTICATED."""

    def __init__(
        self, token: str, exempt_prefixes: Iterable[str] = GRPC_EXEMPT_METHOD_PREFIXES
    ) -> None:
        self._token = validate_token(token)
        self._exempt_prefixes = tuple(exempt_prefixes)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if is_exempt_grpc_method(method, self._exempt_prefixes):
            return continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        value = next((v for k, v in metadata if k == AUTH_METADATA_KEY), None)
        if check_bearer(value, self._token):
            return continuation(handler_call_details)
        reason = "missing" if value is None else "invalid"
        log.warning("rejected gRPC call: %s token", reason, extra={"method": method})
        # Same answer for unknown methods: an unauthenticated caller learns nothing about the API.
        return _aborting_handler(
            continuation(handler_call_details),
            grpc.StatusCode.UNAUTHENTICATED,
            f"{reason} bearer token in 'authorization' metadata",
        )


class BearerAuthMiddleware:
    """ASGI middleware: 401 for HTTP requests without `Authorization: Bearer <token>`.

    Pure ASGI (not Starlette's BaseHTTPMiddleware) so streaming responses pass untouched. Use it
    with `app.add_middleware(BearerAuthMiddleware, token=...)`.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        token: str,
        public_paths: Iterable[str] = HTTP_PROBE_PATHS,
        metrics_public: bool = True,
    ) -> None:
        self.app = app
        self._token = validate_token(token)
        paths = set(public_paths)
        if metrics_public:
            paths.add(METRICS_PATH)
        self._public_paths = frozenset(paths)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self._public_paths:
            await self.app(scope, receive, send)
            return
        value = None
        for name, raw in scope.get("headers", ()):
            if name == b"authorization":
                value = raw
                break
        if check_bearer(value, self._token):
            await self.app(scope, receive, send)
            return
        reason = "missing" if value is None else "invalid"
        log.warning("rejected HTTP request: %s token", reason, extra={"path": scope["path"]})
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = f'{{"detail":"{reason} bearer token"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
