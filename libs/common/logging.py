"""Structured logging for AgentRL services: one setup call, JSON lines or a human format.

`setup_logging(service, level, json=...)` configures the root logger once per process (calling it
again replaces its handler instead of adding a second one). Every record carries `ts` (UTC,
ISO 8601), `level`, `service`, `logger`, `msg`, the context fields bound with `log_context` /
`bind_context` (e.g. run_id, request_id; held in a contextvar, so they follow a request through
its thread or asyncio task), and the record's `extra={...}` fields. JSON lines suit Kubernetes
log collectors; the human format suits a terminal (`agentrl up`).

Modules log through the standard library (`get_logger(__name__)` is `logging.getLogger`), so
third-party loggers end up in the same stream and format.
"""

from __future__ import annotations

import contextlib
import contextvars
import json as jsonlib
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

# Read-only, so no caller can mutate the default shared by every thread and task.
_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "agentrl_log_context", default=_NO_FIELDS
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def get_logger(name: str) -> logging.Logger:
    """The standard logger `name`; pass structured fields with `extra={...}`."""
    return logging.getLogger(name)


def get_context() -> dict[str, Any]:
    """The context fields bound in the current thread / task."""
    return dict(_CONTEXT.get())


def bind_context(**fields: Any) -> contextvars.Token:
    """Add fields to the current context until `unbind_context(token)`."""
    return _CONTEXT.set({**_CONTEXT.get(), **fields})


def unbind_context(token: contextvars.Token) -> None:
    """Restore the context that was current before `bind_context` returned `token`."""
    _CONTEXT.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within the block, every record also carries `fields` (nested blocks add to them)."""
    token = bind_context(**fields)
    try:
        yield
    finally:
        unbind_context(token)


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_CONTEXT.get())
    fields.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS})
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    ts = datetime.fromtimestamp(record.created, tz=UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, then context and extra fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _record_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Values that JSON cannot hold (paths, enums, status codes) are logged as their str().
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`2024-05-01T12:00:00.123Z INFO  sandbox agentrl.x: message key=value ...`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname:<5} {self.service} {record.name}: "
            f"{record.getMessage()}"
        )
        fields = _record_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _AgentrlHandler(logging.StreamHandler):
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(
    service: str, level: str | int = "INFO", json: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record of the process to `stream` (default stderr) in one format.

    `level` is a name (`"DEBUG"`) or number; ValueError for an unknown name. Returns the handler
    (tests remove it with `logging.getLogger().removeHandler`).
    """
    if isinstance(level, str):
        numeric = logging.getLevelNamesMapping().get(level.upper())
        if numeric is None:
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
        level = numeric
    handler = _AgentrlHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(service) if json else HumanFormatter(service))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _AgentrlHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: thousands a second from a rollout worker, burying
    # what matters. Its warnings and errors still come through.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    return handler
