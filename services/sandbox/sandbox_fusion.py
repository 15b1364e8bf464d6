"""SandboxFusion's `POST /run_code` schema, and its mapping to and from our types.

Same JSON field names, defaults and status strings as SandboxFusion (bytedance/SandboxFusion,
sandbox/server/sandbox_api.py), so RL code written for it works by changing the URL:

request  {code, language, compile_timeout, run_timeout, memory_limit_MB, stdin, files,
          fetch_files}; files and fetched files are base64.
response {status: Success|Failed|SandboxError, message, compile_result, run_result:
          {status: Finished|Error|TimeLimitExceeded, execution_time, return_code, stdout,
          stderr}, executor_pod_name, files}

Mapping: ok -> Success/Finished; error, oom, output_limit -> Failed/Finished with the return
code (message names oom/output_limit); timeout -> Failed/TimeLimitExceeded; rejected and
sandbox_error -> SandboxError (run_result Error for sandbox_error, none for rejected).
Deviations, on purpose: an unknown language is answered 200 SandboxError with a message
(SandboxFusion answers 422 from its Literal type); output over the cap is returned up to the
cap with message `output_limit` instead of being silently cut.

What this module does NOT cover: `/run_jupyter`, `/submit` and SandboxFusion's dataset APIs;
compiled languages (compile_timeout is accepted and ignored).
"""

from __future__ import annotations

import base64
import binascii
import os
from enum import Enum

from pydantic import BaseModel, Field

from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult, RequestRejected, Status


class RunStatus(str, Enum):
    Success = "Success"
    Failed = "Failed"
    SandboxError = "SandboxError"


class CommandRunStatus(str, Enum):
    Finished = "Finished"
    Error = "Error"
    TimeLimitExceeded = "TimeLimitExceeded"


class RunCodeRequest(BaseModel):
    code: str
    language: str = "python"
    compile_timeout: float = 10
    run_timeout: float = 10
    memory_limit_MB: int = -1
    """-1: the service default."""
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    """path -> base64 content."""
    fetch_files: list[str] = Field(default_factory=list)


class CommandRunResult(BaseModel):
    status: CommandRunStatus
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    status: RunStatus
    message: str
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


def to_request(body: RunCodeRequest, request_id: str = "") -> ExecutionRequest:
    """Our request for a SandboxFusion one; RequestRejected for undecodable base64."""
    files: dict[str, bytes] = {}
    for path, content in body.files.items():
        try:
            files[path] = base64.b64decode(content or "", validate=True)
        except (binascii.Error, ValueError):
            raise RequestRejected(f"files[{path[:60]!r}] is not valid base64") from None
    return ExecutionRequest(
        code=body.code, language=body.language, stdin=(body.stdin or "").encode(),
        files=files, fetch_files=list(body.fetch_files), timeout_s=body.run_timeout,
        memory_mb=max(0, body.memory_limit_MB), request_id=request_id,
    )


def to_response(result: ExecutionResult) -> RunCodeResponse:
    pod = os.environ.get("MY_POD_NAME") or os.environ.get("HOSTNAME")
    files = {path: base64.b64encode(data).decode() for path, data in result.files.items()}
    if result.status == Status.REJECTED:
        return RunCodeResponse(status=RunStatus.SandboxError, message=f"rejected: {result.message}",
                               executor_pod_name=pod)
    run = CommandRunResult(
        status=CommandRunStatus.Finished, execution_time=result.wall_time_s,
        return_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
    )
    if result.status == Status.SANDBOX_ERROR:
        run.status, run.return_code = CommandRunStatus.Error, None
        return RunCodeResponse(status=RunStatus.SandboxError, message=result.message,
                               run_result=run, executor_pod_name=pod)
    if result.status == Status.TIMEOUT:
        run.status, run.return_code = CommandRunStatus.TimeLimitExceeded, None
    status = RunStatus.Success if result.status == Status.OK else RunStatus.Failed
    message = "" if result.status in (Status.OK, Status.ERROR) else (
        f"{result.status.value}: {result.message}")
    return RunCodeResponse(status=status, message=message, run_result=run,
                           executor_pod_name=pod, files=files)
