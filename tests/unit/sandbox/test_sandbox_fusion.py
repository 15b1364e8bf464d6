"""SandboxFusion schema mapping, field by field (the clients' view: test_sandbox_fusion_clients)."""

import base64
import dataclasses

import pytest
from pydantic import ValidationError

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult, RequestRejected, Status
from agentrl.sandbox.languages import Language
from agentrl.sandbox.sandbox_fusion import RunCodeRequest, to_request, to_response

CONFIG = SandboxConfig(max_timeout_s=120, max_memory_mb=4096)


def test_request_fields_map_to_our_request():
    body = RunCodeRequest.model_validate(
        {
            "code": "print(input())",
            "language": "python",
            "compile_timeout": 3,
            "run_timeout": 2.5,
            "memory_limit_MB": 256,
            "stdin": "hi\n",
            "files": {"data/in.txt": base64.b64encode(b"\xff\x00").decode(), "skipped": None},
            "fetch_files": ["out.txt"],
        }
    )
    request, clamped = to_request(body, CONFIG, "rid")
    assert (request.code, request.language, request.timeout_s, request.memory_mb) == (
        "print(input())",
        "python",
        2.5,
        256,
    )
    # A null file content writes no file, as SandboxFusion's restore_files skips it.
    assert request.stdin == b"hi\n" and request.files == {"data/in.txt": b"\xff\x00"}
    assert request.fetch_files == ["out.txt"] and request.request_id == "rid"
    assert clamped == {}


def test_defaults_match_sandbox_fusion():
    request, _ = to_request(RunCodeRequest(code="1", language="python"), CONFIG)
    # memory_limit_MB -1 is "no limit" in SandboxFusion: the service's cap, not its default.
    assert request.timeout_s == 10 and request.memory_mb == 4096 and request.stdin == b""


def test_language_is_required_and_must_run_here():
    with pytest.raises(ValidationError) as missing:
        RunCodeRequest.model_validate({"code": "1"})
    assert [(e["type"], e["loc"]) for e in missing.value.errors()] == [("missing", ("language",))]
    for language in ("go", "nodejs", "", "  "):
        with pytest.raises(ValidationError) as refused:
            RunCodeRequest(code="1", language=language)
        error = refused.value.errors()[0]
        assert error["type"] == "literal_error" and "bash, cpp, python" in error["msg"]
    assert RunCodeRequest(code="1", language="python3").language == "python"
    assert RunCodeRequest(code="1", language="cpp").language == "cpp"


@pytest.mark.parametrize("field", ["run_timeout", "compile_timeout"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_timeouts_must_be_positive_and_finite(field, value):
    with pytest.raises(ValidationError):
        RunCodeRequest(code="1", language="python", **{field: value})


def test_limits_above_the_caps_are_clamped_and_reported():
    body = RunCodeRequest(
        code="1", language="python", run_timeout=300, compile_timeout=200, memory_limit_MB=8192
    )
    request, clamped = to_request(body, CONFIG)
    assert (request.timeout_s, request.memory_mb) == (120, 4096)
    assert {k: (v.requested, v.applied) for k, v in clamped.items()} == {
        "run_timeout": (300, 120),
        "compile_timeout": (200, 120),
        "memory_limit_MB": (8192, 4096),
    }
    body = to_response(ExecutionResult(Status.OK), clamped).to_json()
    assert body["clamped_limits"]["run_timeout"] == {"requested": 300.0, "applied": 120.0}


def test_compile_timeout_never_extends_the_run():
    request, clamped = to_request(
        RunCodeRequest(code="1", language="python", compile_timeout=100, run_timeout=2), CONFIG
    )
    assert request.timeout_s == 2 and clamped == {}


def test_a_compile_budget_is_filled_from_compile_timeout():
    # Tripwire for the first compiled language (issue 16): once ExecutionRequest or Language
    # carries a compile step or its budget, to_request must set it from compile_timeout.
    compile_fields = [f.name for f in dataclasses.fields(ExecutionRequest) if "compile" in f.name]
    compiled = [f.name for f in dataclasses.fields(Language) if "compile" in f.name]
    request, _ = to_request(RunCodeRequest(code="1", language="python", compile_timeout=7), CONFIG)
    assert not compiled or compile_fields, "a compile step needs a budget in ExecutionRequest"
    for name in compile_fields:
        assert getattr(request, name) == 7, f"to_request must fill ExecutionRequest.{name}"


def test_bad_base64_is_rejected():
    with pytest.raises(RequestRejected, match="base64"):
        to_request(RunCodeRequest(code="1", language="python", files={"a": "!!!"}), CONFIG)


@pytest.mark.parametrize(
    "status,exit_code,top,run_status,return_code",
    [
        (Status.OK, 0, "Success", "Finished", 0),
        (Status.ERROR, 1, "Failed", "Finished", 1),
        (Status.TIMEOUT, -9, "Failed", "TimeLimitExceeded", None),
        (Status.OOM, 137, "Failed", "Finished", 137),
        (Status.OUTPUT_LIMIT, -9, "Failed", "Finished", -9),
        (Status.SANDBOX_ERROR, -1, "SandboxError", "Error", None),
    ],
)
def test_status_mapping(status, exit_code, top, run_status, return_code):
    result = ExecutionResult(
        status,
        exit_code=exit_code,
        stdout="o",
        stderr="e",
        wall_time_s=0.5,
        message="why",
        files={"f": b"\x01"},
    )
    body = to_response(result, fetch_files=["./f", "missing"]).to_json()
    # Nothing clamped: exactly SandboxFusion's RunCodeResponse fields.
    assert set(body) == {
        "status",
        "message",
        "compile_result",
        "run_result",
        "executor_pod_name",
        "files",
    }
    assert body["status"] == top and body["compile_result"] is None
    run = body["run_result"]
    assert set(run) == {"status", "execution_time", "return_code", "stdout", "stderr"}
    assert (run["status"], run["return_code"], run["execution_time"]) == (
        run_status,
        return_code,
        0.5,
    )
    assert (run["stdout"], run["stderr"]) == ("o", "e")
    if status in (Status.OOM, Status.OUTPUT_LIMIT, Status.TIMEOUT):
        assert body["message"].startswith(status.value)
    if top != "SandboxError":
        # Keyed as the client asked for it; a file the program did not write is left out.
        assert body["files"] == {"./f": base64.b64encode(b"\x01").decode()}
