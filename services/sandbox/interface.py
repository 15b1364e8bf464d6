"""The contract between the sandbox service and its backends: request, result, status, Backend.

An `ExecutionRequest` has been validated and given its limits (agentrl.sandbox.limits) before a
backend sees it; a backend turns it into an `ExecutionResult` and never raises for anything the
untrusted code does (that is a status). A backend raises only for its own failures, which the
service reports as `sandbox_error`.

What this module does NOT cover: isolation itself (each backend's module says what it covers).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field


class Status(str, enum.Enum):
    """How an execution ended; mirrors `agentrl.sandbox.v1.ExecutionStatus`."""

    OK = "ok"  # exited 0
    ERROR = "error"  # exited non-zero or raised
    TIMEOUT = "timeout"  # wall-clock limit hit; the whole process tree was killed
    OOM = "oom"  # memory limit hit
    OUTPUT_LIMIT = "output_limit"  # stdout or stderr passed the cap; the program was stopped
    REJECTED = "rejected"  # refused before running (bad request, unknown language, overload)
    SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; the code may not have run


@dataclass
class ExecutionRequest:
    """One program to run. Limits are filled in by `limits.resolve_request`."""

    code: str
    language: str = "python"
    stdin: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    """Work-dir relative path -> content, written before the program starts."""
    fetch_files: list[str] = field(default_factory=list)
    """Work-dir relative paths read back after the program ends (missing ones are skipped)."""
    timeout_s: float = 0.0
    memory_mb: int = 0
    compile_timeout_s: float = 0.0
    """Wall-clock limit of a compiled language's compile step (0: `default_timeout_s`); never
    added to `timeout_s`, and bounds nothing for python and bash."""
    session_id: str = ""
    request_id: str = ""


@dataclass
class CompileResult:
    """How a compiled language's compile step ended (the compiler's own output)."""

    status: Status
    """`ok`, `error` (the compiler exited non-zero), `timeout`, `oom` or `output_limit`."""
    exit_code: int = -1
    stdout: str = ""
    stderr: str = ""
    wall_time_s: float = 0.0


@dataclass
class ExecutionResult:
    """What happened; text fields are decoded as UTF-8 with invalid bytes replaced."""

    status: Status
    exit_code: int = -1
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    peak_memory_mb: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)
    message: str = ""
    backend: str = ""
    request_id: str = ""
    compile_result: CompileResult | None = None
    """Set for a compiled language; when it is not `ok` the program did not run and `status`
    is its status (`error` for a compile error) with the message saying so."""


class RequestRejected(ValueError):
    """The request cannot run as given; the message says what to change."""


class Backend(abc.ABC):
    """Runs one request at a time per call; callers bound concurrency (agentrl.sandbox.admission).

    `execute` may be called from many threads at once, up to the `max_concurrency` the backend
    was built for.
    """

    name: str = ""

    @abc.abstractmethod
    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        """Run `request` (already validated) in a fresh, isolated environment."""

    def ready(self) -> bool:
        """Whether the backend can take work now (the Docker pool has a warm container...)."""
        return True

    def pool_size(self) -> int:
        """Execution environments ready right now (slots or warm containers)."""
        return 0

    def limits(self) -> list:
        """Every limit with how it is enforced, or why not (agentrl.sandbox.enforcement.Limit)."""
        return []

    def close(self) -> None:
        """Kill whatever still runs and release every host resource (cgroups, mounts...)."""
