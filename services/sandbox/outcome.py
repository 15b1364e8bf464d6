"""Turn what a sandboxed process did (agentrl.sandbox.capture.Captured) into a typed result.

Shared by the bwrap and docker backends, so that both report the same statuses for the same
behaviour: timeout, then output over the cap, then an OOM kill seen by the memory cgroup,
then a sandbox tool that could not start the program, then the exit status.

What this module does NOT cover: resource figures (CPU time, peak memory, files), which each
backend fills in from its own cgroup and work dir.
"""

from __future__ import annotations

from agentrl.sandbox.capture import Captured
from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult, Status


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
