"""Turn what a sandboxed process did (agentrl.sandbox.capture.Captured) into a typed result.

Shared by the bwrap and docker backends, so that both report the same statuses for the same
behaviour: timeout, then output over the cap, then an OOM kill seen by the memory cgroup,
then a sandbox tool that could not start the program, then the exit status.

`compile_outcome` and `compile_failure` do the same for a compiled language's compile step:
its status, and the answer when it did not succeed (the program did not run).

What this module does NOT cover: resource figures (CPU time, peak memory, files), which each
backend fills in from its own cgroup and work dir.
"""

from __future__ import annotations

from dataclasses import replace

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.capture import Captured
from agentrl.sandbox.interface import CompileResult, ExecutionRequest, ExecutionResult, Status

# g++ needs 100-300 MB for a program that includes <bits/stdc++.h>; a request's small memory
# limit (meant for the program) must not make its compile fail, so the compile step gets at
# least this much (within max_memory_mb).
COMPILE_MEMORY_MB = 1024


def classify(
    captured: Captured,
    oomed: bool,
    request: ExecutionRequest,
    max_output_bytes: int,
    failure_prefixes: tuple[bytes, ...] = (b"bwrap: ",),
) -> ExecutionResult:
    """Turn what a process did into a typed result (the order of the checks matters).

    A non-zero exit with no stdout and stderr starting with one of `failure_prefixes` (what
    the sandbox tool prints when it could not start the program) is `sandbox_error`."""
    code = captured.returncode
    stderr = captured.stderr
    if captured.timed_out:
        status, message = Status.TIMEOUT, f"killed at the {request.timeout_s:g} s wall-clock limit"
    elif captured.output_exceeded:
        status = Status.OUTPUT_LIMIT
        message = f"output passed {max_output_bytes} bytes; the program was stopped"
    elif oomed:
        status, message = Status.OOM, f"killed at the {request.memory_mb} MB memory limit"
    elif code != 0 and stderr.startswith(failure_prefixes) and not captured.stdout:
        status, message = Status.SANDBOX_ERROR, stderr.decode("utf-8", "replace").strip()
    elif code == 0:
        status, message = Status.OK, ""
    else:
        status, message = Status.ERROR, ""
    return ExecutionResult(
        status=status,
        exit_code=code,
        stdout=captured.stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        stdout_truncated=captured.stdout_truncated,
        stderr_truncated=captured.stderr_truncated,
        wall_time_s=captured.wall_time_s,
        message=message,
    )


def compile_memory_mb(request: ExecutionRequest, config: SandboxConfig) -> int:
    """The compile step's memory limit: the request's, at least COMPILE_MEMORY_MB, at most
    the service's cap."""
    return min(max(request.memory_mb, COMPILE_MEMORY_MB), config.max_memory_mb)


def compile_outcome(
    captured: Captured,
    oomed: bool,
    request: ExecutionRequest,
    memory_mb: int,
    max_output_bytes: int,
    failure_prefixes: tuple[bytes, ...] = (b"bwrap: ",),
) -> CompileResult:
    """The compile step's result, classified like a run under the compile step's limits."""
    step = replace(request, timeout_s=request.compile_timeout_s, memory_mb=memory_mb)
    result = classify(captured, oomed, step, max_output_bytes, failure_prefixes)
    return CompileResult(
        result.status, result.exit_code, result.stdout, result.stderr, result.wall_time_s
    )


def compile_failure(
    compiled: CompileResult, request: ExecutionRequest, backend: str
) -> ExecutionResult:
    """The answer when the compile step did not succeed: the program did not run; status is
    the step's (`error` for a compile error), the compiler's output is stdout/stderr."""
    message = {
        Status.ERROR: f"compile error (the compiler exited {compiled.exit_code})",
        Status.TIMEOUT: f"the compile step passed its {request.compile_timeout_s:g} s limit",
        Status.OOM: "the compile step ran out of memory",
        Status.OUTPUT_LIMIT: "the compiler's output passed the cap",
    }.get(compiled.status, "the compile step failed")
    return ExecutionResult(
        status=compiled.status,
        exit_code=compiled.exit_code,
        stdout=compiled.stdout,
        stderr=compiled.stderr,
        wall_time_s=compiled.wall_time_s,
        message=f"{message}; the program did not run",
        backend=backend,
        request_id=request.request_id,
        compile_result=compiled,
    )
