"""Validate a request and fill in its limits from `SandboxConfig` before any backend sees it.

Every refusal is a `RequestRejected` whose message says what to change; the service answers it
with status `rejected` (gRPC) or an HTTP 422 (SandboxFusion has no such status; a 422 is an
error its clients see, where a 200 `SandboxError` would be silently scored).

What this module does NOT cover: limits enforced while the code runs (the backends do that);
this only refuses requests that could never run within the configured bounds.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.interface import ExecutionRequest, RequestRejected
from agentrl.sandbox.languages import get_language

# The work dir as the program sees it; absolute paths under it are accepted in `files`.
WORK_DIR = "/work"
# Enough for a test suite's fixtures; a request is bounded by max_request_bytes anyway.
MAX_FILES = 256
MAX_PATH_CHARS = 255


def normalize_path(path: str) -> str:
    """A work-dir relative path (`a/b.txt`), or RequestRejected for anything that could escape.

    Accepts `a/b.txt`, `./a/b.txt` and `/work/a/b.txt`; refuses other absolute paths, `..`,
    empty names and NUL bytes.
    """
    if not path or len(path) > MAX_PATH_CHARS or "\0" in path:
        raise RequestRejected(f"file path {path[:60]!r} must be 1-{MAX_PATH_CHARS} chars, no NUL")
    if path.startswith(WORK_DIR + "/"):
        path = path[len(WORK_DIR) + 1 :]
    if path.startswith("/"):
        raise RequestRejected(f"file path {path!r} must be relative to the work dir {WORK_DIR}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise RequestRejected(f"file path {path!r} must name a file inside the work dir (no '..')")
    return posixpath.join(*parts)


def request_size_bytes(request: ExecutionRequest) -> int:
    """Bytes of code, stdin and files: what `max_request_bytes` bounds."""
    files = sum(len(k) + len(v) for k, v in request.files.items())
    return len(request.code.encode("utf-8", "replace")) + len(request.stdin) + files


def resolve_request(request: ExecutionRequest, config: SandboxConfig) -> ExecutionRequest:
    """A copy of `request` with defaults applied, or RequestRejected saying what is wrong."""
    language = get_language(request.language)
    size = request_size_bytes(request)
    if size > config.max_request_bytes:
        raise RequestRejected(
            f"request is {size} bytes; the limit is {config.max_request_bytes} (max_request_bytes)"
        )
    timeout_s = request.timeout_s or config.default_timeout_s
    if not 0 < timeout_s <= config.max_timeout_s:
        raise RequestRejected(f"timeout_s={timeout_s} must be in (0, {config.max_timeout_s}]")
    compile_timeout_s = request.compile_timeout_s or config.default_timeout_s
    if not 0 < compile_timeout_s <= config.max_timeout_s:
        raise RequestRejected(
            f"compile_timeout_s={compile_timeout_s} must be in (0, {config.max_timeout_s}]"
        )
    memory_mb = request.memory_mb or config.default_memory_mb
    if not 16 <= memory_mb <= config.max_memory_mb:
        raise RequestRejected(f"memory_mb={memory_mb} must be in [16, {config.max_memory_mb}]")
    if len(request.files) > MAX_FILES or len(request.fetch_files) > MAX_FILES:
        raise RequestRejected(f"at most {MAX_FILES} files in and {MAX_FILES} files to fetch")
    files = {normalize_path(path): data for path, data in request.files.items()}
    if language.source_name in files:
        raise RequestRejected(
            f"files may not contain {language.source_name!r}: the code itself is stored there"
        )
    fetch = list(dict.fromkeys(normalize_path(path) for path in request.fetch_files))
    return replace(
        request,
        language=language.name,
        timeout_s=float(timeout_s),
        compile_timeout_s=float(compile_timeout_s),
        memory_mb=int(memory_mb),
        files=files,
        fetch_files=fetch,
    )
