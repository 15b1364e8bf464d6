"""SandboxFusion schema mapping, field by field."""

import base64

import pytest

from agentrl.sandbox.interface import ExecutionResult, RequestRejected, Status
from agentrl.sandbox.sandbox_fusion import RunCodeRequest, to_request, to_response


def test_request_fields_map_to_our_request():
    body = RunCodeRequest.model_validate({
        "code": "print(input())", "language": "python", "compile_timeout": 3,
        "run_timeout": 2.5, "memory_limit_MB": 256, "stdin": "hi\n",
        "files": {"data/in.txt": base64.b64encode(b"\xff\x00").decode()},
        "fetch_files": ["out.txt"],
    })
    request = to_request(body, "rid")
    assert (request.code, request.language, request.timeout_s, request.memory_mb) == (
        "print(input())", "python", 2.5, 256)
    assert request.stdin == b"hi\n" and request.files == {"data/in.txt": b"\xff\x00"}
    assert request.fetch_files == ["out.txt"] and request.request_id == "rid"


def test_defaults_match_sandbox_fusion():
    request = to_request(RunCodeRequest(code="1"))
    assert request.timeout_s == 10 and request.memory_mb == 0 and request.stdin == b""


def test_bad_base64_is_rejected():
    with pytest.raises(RequestRejected, match="base64"):
        to_request(RunCodeRequest(code="1", files={"a": "!!!"}))


@pytest.mark.parametrize("status,exit_code,top,run_status,return_code", [
    (Status.OK, 0, "Success", "Finished", 0),
    (Status.ERROR, 1, "Failed", "Finished", 1),
    (Status.TIMEOUT, -9, "Failed", "TimeLimitExceeded", None),
    (Status.OOM, 137, "Failed", "Finished", 137),
    (Status.OUTPUT_LIMIT, -9, "Failed", "Finished", -9),
    (Status.SANDBOX_ERROR, -1, "SandboxError", "Error", None),
])
def test_status_mapping(status, exit_code, top, run_status, return_code):
    result = ExecutionResult(status, exit_code=exit_code, stdout="o", stderr="e",
                             wall_time_s=0.5, message="why", files={"f": b"\x01"})
    body = to_response(result).model_dump(mode="json")
    assert set(body) == {"status", "message", "compile_result", "run_result",
                         "executor_pod_name", "files"}
    assert body["status"] == top and body["compile_result"] is None
    run = body["run_result"]
    assert set(run) == {"status", "execution_time", "return_code", "stdout", "stderr"}
    assert (run["status"], run["return_code"], run["execution_time"]) == (run_status,
                                                                         return_code, 0.5)
    assert (run["stdout"], run["stderr"]) == ("o", "e")
    if status in (Status.OOM, Status.OUTPUT_LIMIT, Status.TIMEOUT):
        assert body["message"].startswith(status.value)
    if top != "SandboxError":
        assert body["files"] == {"f": base64.b64encode(b"\x01").decode()}


def test_rejected_is_a_sandbox_error_without_run_result():
    body = to_response(ExecutionResult(Status.REJECTED, message="unknown language")).model_dump()
    assert body["status"] == "SandboxError" and body["run_result"] is None
    assert "unknown language" in body["message"]
