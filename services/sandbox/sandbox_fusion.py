"""SandboxFusion's `POST /run_code` schema, and its mapping to and from our types.

Same JSON field names, defaults and status strings as SandboxFusion (bytedance/SandboxFusion,
sandbox/server/sandbox_api.py and sandbox/runners/types.py), so RL code written for it (verl's
sandbox_fusion reward and tool, SandboxFusion's own `sandbox_fusion` client) works by changing
the URL. docs/sandbox.md has the table, field by field, of what each client reads.

    request JSON -> RunCodeRequest (422: schema, missing `language`, a language not run here)
        -> to_request (clamp limits to the caps; 422: bad base64) -> ExecutionRequest
        -> Sandbox.execute -> ExecutionResult (rejected -> 422 in http_api)
        -> to_response -> RunCodeResponse JSON (+ `clamped_limits` when a limit was clamped)

Invariants a client can rely on:
- Whatever the service refuses to run comes back as an HTTP error (422), never as a 200
  `SandboxError`: verl scores a `SandboxError` -1 without a log line, while it logs every
  non-2xx answer as an API error. `SandboxError` means only that the sandbox itself failed.
- A limit above the service's cap (`run_timeout` or `compile_timeout` over `max_timeout_s`,
  `memory_limit_MB` over `max_memory_mb`) runs at the cap and the response says so in
  `clamped_limits` ({field: {requested, applied}}), an extra field SandboxFusion's clients
  ignore; the field is absent when nothing was clamped, so the body is SandboxFusion's.
- `language` is required, as in SandboxFusion; one this sandbox does not run (SandboxFusion's
  `nodejs`, `go`...) is a 422 naming the languages it does run (python, bash, cpp), as
  SandboxFusion answers a language outside its own list.
- `compile_timeout` bounds cpp's compile step and never extends the run; `compile_result` is
  the compile step's (`Finished` with the compiler's exit code and output, or
  `TimeLimitExceeded`), and when it did not succeed `run_result` is null and the status
  `Failed`, as SandboxFusion answers a compile error. python and bash have no compile step
  (`compile_result` is null, as SandboxFusion's python runner answers): for them it is
  validated and clamped but bounds nothing.

Mapping: ok -> Success/Finished; error, oom, output_limit -> Failed/Finished with the return
code (message names oom/output_limit); timeout -> Failed/TimeLimitExceeded (no return code);
sandbox_error -> SandboxError with run_result Error. `memory_limit_MB` -1 or 0 (SandboxFusion: no
limit) -> the cap `max_memory_mb`; a null file content writes no file (as SandboxFusion).

What this module does NOT cover: `/run_jupyter`, `/submit` and SandboxFusion's dataset APIs;
compiled languages other than cpp; SandboxFusion's `IGNORE_THIS_FILE` file names (written like
any other).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from enum import Enum

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.interface import (
    CompileResult,
    ExecutionRequest,
    ExecutionResult,
    RequestRejected,
    Status,
)
from agentrl.sandbox.languages import ALIASES, LANGUAGES, get_language
from agentrl.sandbox.limits import normalize_path

log = get_logger(__name__)

# Fields whose clamp has been logged: an RL job sends the same limits with every request, so one
# line per field and process says it without flooding the log.
_LOGGED_CLAMPS: set[str] = set()


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
    language: str
    """Required, as in SandboxFusion: a language of agentrl.sandbox.languages or 422."""
    compile_timeout: float = Field(default=10, gt=0, allow_inf_nan=False)
    """Seconds for the compile step of a compiled language (cpp); bounds nothing for python
    and bash (see the module docstring)."""
    run_timeout: float = Field(default=10, gt=0, allow_inf_nan=False)
    memory_limit_MB: int = -1
    """-1 or 0: no limit from the request, so the service's cap `max_memory_mb` (SandboxFusion
    applies no limit then)."""
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    """path -> base64 content; a null content writes no file (as SandboxFusion)."""
    fetch_files: list[str] = Field(default_factory=list)

    @field_validator("language")
    @classmethod
    def _runs_here(cls, value: str) -> str:
        # get_language reads an empty name as python; SandboxFusion's Literal refuses it.
        if value.strip():
            try:
                return get_language(value).name
            except RequestRejected:
                pass
        runnable = ", ".join(sorted(LANGUAGES))
        aliases = ", ".join(f"{alias}={name}" for alias, name in sorted(ALIASES.items()))
        raise PydanticCustomError(
            "literal_error",
            "this sandbox does not run '{language}'; it runs {runnable} (aliases {aliases}); "
            "docs/sandbox.md lists what it supports",
            {"language": value[:40], "runnable": runnable, "aliases": aliases},
        )


class ClampedLimit(BaseModel):
    requested: float
    applied: float


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
    clamped_limits: dict[str, ClampedLimit] = Field(default_factory=dict)
    """AgentRL's addition: limits that ran at the service's cap instead of the requested value."""

    def to_json(self) -> dict:
        """SandboxFusion's body; `clamped_limits` only when something was clamped."""
        return self.model_dump(
            mode="json", exclude=set() if self.clamped_limits else {"clamped_limits"}
        )


def _clamp(
    field: str, requested: float, cap: float, setting: str, clamped: dict[str, ClampedLimit]
) -> float:
    if requested <= cap:
        return requested
    clamped[field] = ClampedLimit(requested=requested, applied=cap)
    if field not in _LOGGED_CLAMPS:
        _LOGGED_CLAMPS.add(field)
        log.warning(
            "/run_code %s=%s is above sandbox.%s=%s: runs with %s (reported in the "
            "response's clamped_limits); raise sandbox.%s to allow more",
            field,
            requested,
            setting,
            cap,
            cap,
            setting,
        )
    return cap


def to_request(
    body: RunCodeRequest, config: SandboxConfig, request_id: str = ""
) -> tuple[ExecutionRequest, dict[str, ClampedLimit]]:
    """Our request for a SandboxFusion one and the limits clamped to `config`'s caps.

    Raises RequestRejected for undecodable base64 (the HTTP front end answers 422).
    """
    files: dict[str, bytes] = {}
    for path, content in body.files.items():
        if content is None:
            continue
        try:
            files[path] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRejected(f"files[{path[:60]!r}] is not valid base64") from None
    clamped: dict[str, ClampedLimit] = {}
    run_timeout_s = _clamp(
        "run_timeout", body.run_timeout, config.max_timeout_s, "max_timeout_s", clamped
    )
    compile_timeout_s = _clamp(
        "compile_timeout", body.compile_timeout, config.max_timeout_s, "max_timeout_s", clamped
    )
    memory_mb = (
        config.max_memory_mb
        if body.memory_limit_MB <= 0
        else int(
            _clamp(
                "memory_limit_MB",
                body.memory_limit_MB,
                config.max_memory_mb,
                "max_memory_mb",
                clamped,
            )
        )
    )
    execution = ExecutionRequest(
        code=body.code,
        language=body.language,
        stdin=(body.stdin or "").encode(),
        files=files,
        fetch_files=list(body.fetch_files),
        timeout_s=run_timeout_s,
        compile_timeout_s=compile_timeout_s,
        memory_mb=memory_mb,
        request_id=request_id,
    )
    return execution, clamped


def _command_result(step: CompileResult | None) -> CommandRunResult | None:
    """SandboxFusion's compile_result for our compile step (None without one)."""
    if step is None:
        return None
    timed_out = step.status == Status.TIMEOUT
    return CommandRunResult(
        status=CommandRunStatus.TimeLimitExceeded if timed_out else CommandRunStatus.Finished,
        execution_time=step.wall_time_s,
        return_code=None if timed_out else step.exit_code,
        stdout=step.stdout,
        stderr=step.stderr,
    )


def to_response(
    result: ExecutionResult,
    clamped: dict[str, ClampedLimit] | None = None,
    fetch_files: Sequence[str] = (),
) -> RunCodeResponse:
    """SandboxFusion's answer for a run (not for `rejected`: the front end answers that 422).

    Fetched files are keyed by the path as the client wrote it in `fetch_files` (`./out.txt`
    stays `./out.txt`), as SandboxFusion keys them.
    """
    assert result.status != Status.REJECTED, "rejected requests are answered 422, not run"
    pod = os.environ.get("MY_POD_NAME") or os.environ.get("HOSTNAME")
    files: dict[str, str] = {}
    for path in fetch_files:
        data = result.files.get(normalize_path(path))
        if data is not None:
            files[path] = base64.b64encode(data).decode()
    run = CommandRunResult(
        status=CommandRunStatus.Finished,
        execution_time=result.wall_time_s,
        return_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
    )
    common = {
        "executor_pod_name": pod,
        "clamped_limits": clamped or {},
        "compile_result": _command_result(result.compile_result),
    }
    if result.compile_result is not None and result.compile_result.status != Status.OK:
        # The program did not run: SandboxFusion answers a failed compile with Failed and no
        # run_result; the message says why.
        return RunCodeResponse(status=RunStatus.Failed, message=result.message, **common)
    if result.status == Status.SANDBOX_ERROR:
        run.status, run.return_code = CommandRunStatus.Error, None
        return RunCodeResponse(
            status=RunStatus.SandboxError, message=result.message, run_result=run, **common
        )
    if result.status == Status.TIMEOUT:
        run.status, run.return_code = CommandRunStatus.TimeLimitExceeded, None
    status = RunStatus.Success if result.status == Status.OK else RunStatus.Failed
    message = (
        ""
        if result.status in (Status.OK, Status.ERROR)
        else (f"{result.status.value}: {result.message}")
    )
    return RunCodeResponse(status=status, message=message, run_result=run, files=files, **common)
