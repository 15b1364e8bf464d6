"""SandboxFusion's clients against a real sandbox service (bwrap) through `POST /run_code`.

The request bodies and the parsing are the published clients', reimplemented in a few lines each
(cited where they come from), not AgentRL's own models:
- verl's reward and tool: volcengine/verl verl/utils/reward_score/sandbox_fusion/utils.py
  (`call_sandbox_api`, `_process_single_case`) and verl/tools/sandbox_fusion_tools.py
  (`SandboxFusionTool.execute_code`), as of b178a3c (2026-01).
- SandboxFusion's own client: bytedance/SandboxFusion scripts/client/src/sandbox_fusion/
  client.py (`run_code`, `summary_run_code_result`) and models.py, and the server's schema
  sandbox/server/sandbox_api.py + sandbox/runners/types.py, as of 469de08.
What a user would notice is asserted on the client's side: verl's score and metadata status,
the SDK's exception or summary.
"""

import base64
import json
import time

import pytest
import requests
from prometheus_client import CollectorRegistry
from pydantic.v1 import BaseModel

from agentrl.common.config import SandboxConfig
from agentrl.common.http import serve_in_thread
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.http_api import create_sandbox_app
from agentrl.sandbox.interface import RequestRejected
from agentrl.sandbox.languages import get_language

# The service's caps, small so a clamped limit shows within seconds.
MAX_TIMEOUT_S = 2.0
MAX_MEMORY_MB = 256

# SandboxFusion's `Language` literal (sandbox/runners/types.py): what its clients may send.
SANDBOX_FUSION_LANGUAGES = (
    "python",
    "cpp",
    "nodejs",
    "go",
    "go_test",
    "java",
    "php",
    "csharp",
    "bash",
    "typescript",
    "sql",
    "rust",
    "cuda",
    "lua",
    "R",
    "perl",
    "D_ut",
    "ruby",
    "scala",
    "julia",
    "pytest",
    "junit",
    "kotlin_script",
    "jest",
    "verilog",
    "python_gpu",
    "lean",
    "swift",
    "racket",
)
# A program printing "hi" for each language the sandbox may run (cpp comes with issue 16).
HELLO = {
    "python": "print('hi')",
    "bash": "echo hi",
    "cpp": '#include <cstdio>\nint main() { std::puts("hi"); }',
    "nodejs": "console.log('hi')",
}


def _runs_here(language: str) -> bool:
    try:
        get_language(language)
    except RequestRejected:
        return False
    return True


@pytest.fixture(scope="module")
def url():
    config = SandboxConfig(
        max_concurrency=4,
        queue_size=64,
        max_timeout_s=MAX_TIMEOUT_S,
        default_timeout_s=MAX_TIMEOUT_S,
        max_memory_mb=MAX_MEMORY_MB,
        default_memory_mb=128,
    )
    registry = CollectorRegistry()
    sandbox = Sandbox(config, registry=registry)
    http = serve_in_thread(create_sandbox_app(sandbox, token=None, registry=registry))
    yield f"{http.url}/run_code"
    http.stop()
    sandbox.close()


# --- verl (volcengine/verl, verl/utils/reward_score/sandbox_fusion/utils.py) ---


def verl_call_sandbox_api(
    url, code, stdin, compile_timeout, run_timeout, memory_limit_mb, language="python"
):
    """`call_sandbox_api`: its payload and headers; any non-2xx but 504 (retried there) is an
    error string, a 2xx is the parsed JSON."""
    payload = json.dumps(
        {
            "compile_timeout": compile_timeout,
            "run_timeout": run_timeout,
            "code": code,
            "stdin": stdin,
            "memory_limit_MB": memory_limit_mb,
            "language": language,
            "files": {},
            "fetch_files": [],
        }
    )
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    try:
        response = requests.post(
            url, headers=headers, data=payload, timeout=compile_timeout + run_timeout + 10
        )
        response.raise_for_status()
        return response.json(), None
    except requests.exceptions.RequestException as exc:
        return None, f"API Call Failed: API Request Error: {exc}"


def verl_process_single_case(url, code, stdin, expected_output, timeout, memory_limit_mb, language):
    """`_process_single_case`: (result, metadata) with verl's result codes: True/False, -1
    api or sandbox error, -2 runtime error, -3 timeout, -4 compile error."""
    api_response, error = verl_call_sandbox_api(
        url, code, stdin, timeout, timeout, memory_limit_mb, language
    )
    meta = {
        "api_request_error": error,
        "api_response": api_response,
        "status": "unknown",
        "run_status": None,
        "stdout": None,
        "stderr": None,
    }
    if error:
        meta["status"] = "api_error"
        return -1, meta
    compile_result = api_response.get("compile_result")
    run_result = api_response.get("run_result")
    if run_result:
        meta.update(
            run_status=run_result.get("status"),
            stdout=run_result.get("stdout"),
            stderr=run_result.get("stderr"),
        )
    status = api_response.get("status")
    if status == "SandboxError":
        meta["status"] = "sandbox_error"
        return -1, meta
    if status == "Failed":
        if compile_result and (
            compile_result.get("status") in ("Error", "TimeLimitExceeded")
            or compile_result.get("return_code") != 0
        ):
            meta["status"] = "compile_error"
            return -4, meta
        if run_result and meta["run_status"] == "TimeLimitExceeded":
            meta["status"] = "timeout"
            return -3, meta
        if run_result and (meta["run_status"] == "Error" or run_result.get("return_code") != 0):
            meta["status"] = "runtime_error"
            return -2, meta
        meta["status"] = "unknown_failure"
        return -1, meta
    if status == "Success" and run_result and meta["run_status"] == "Finished":
        actual = meta["stdout"] if meta["stdout"] is not None else ""
        ok = expected_output is None or actual.rstrip("\n") == str(expected_output).rstrip("\n")
        meta["status"] = "success" if ok else "wrong_answer"
        return ok, meta
    meta["status"] = f"unexpected_{status}"
    return -1, meta


def verl_tool_execute_code(url, code, timeout=30, language="python", memory_limit_mb=1024):
    """verl/tools/sandbox_fusion_tools.py `SandboxFusionTool.execute_code`: what the model sees
    (config defaults: timeout 30, memory_limit_mb 1024; no stdin, no expected output)."""
    _, meta = verl_process_single_case(url, code, None, None, timeout, memory_limit_mb, language)
    if meta["run_status"] == "Finished":
        return meta["stdout"] + meta["stderr"], meta
    return "no stdout here", meta


# --- SandboxFusion's client (scripts/client/src/sandbox_fusion/{client,models}.py) ---


class SdkError(Exception):
    """The SDK raises a bare Exception; a subclass here so the tests catch only that."""


class SdkCommandRunResult(BaseModel):
    status: str
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class SdkRunCodeResponse(BaseModel):
    """models.py `RunCodeResponse` (pydantic.v1, extra fields ignored)."""

    status: str
    message: str
    compile_result: SdkCommandRunResult | None = None
    run_result: SdkCommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = {}


def sdk_request(code, language, **fields):
    """models.py `RunCodeRequest(...).dict()`: every field sent, defaults included."""
    return {
        "compile_timeout": 10,
        "run_timeout": 10,
        "code": code,
        "stdin": None,
        "language": language,
        "files": {},
        "fetch_files": [],
        **fields,
    }


def sdk_run_code(url, request):
    """client.py `run_code`, one attempt (it retries the same exceptions)."""
    result = requests.post(url, json=request, timeout=60)
    if result.status_code != 200:
        raise SdkError(f"Faas api responded with code {result.status_code}: {result.text}")
    resp = SdkRunCodeResponse(**result.json())
    if resp.status == "SandboxError":
        raise SdkError(f"Sandbox responded with error: {resp.message}")
    return resp


def sdk_summary(result):
    """client.py `summary_run_code_result` with the default SummaryMapping."""
    if result.run_result is None:
        if result.compile_result.status == "TimeLimitExceeded":
            return "CompileTimeout"
        return "CompileFailed"
    if result.run_result.status == "TimeLimitExceeded":
        return "RunTimeout"
    if result.run_result.return_code is None:
        raise SdkError("invalid sandbox result: no return code")
    return "RunFailed" if result.run_result.return_code != 0 else "Success"


# --- the tests ---


def test_verl_reward_scores_each_outcome(url):
    code = "a, b = map(int, input().split())\nprint(a + b)"
    assert verl_process_single_case(url, code, "1 2", "3", 2, 128, "python")[0] is True
    assert verl_process_single_case(url, code, "1 2", "4", 2, 128, "python")[0] is False
    result, meta = verl_process_single_case(url, "1/0", "", "0", 2, 128, "python")
    assert (result, meta["status"]) == (-2, "runtime_error") and "ZeroDivision" in meta["stderr"]
    result, meta = verl_process_single_case(url, "while True: pass", "", "0", 1, 128, "python")
    assert (result, meta["status"]) == (-3, "timeout")


@pytest.mark.parametrize("language", SANDBOX_FUSION_LANGUAGES)
def test_every_sandbox_fusion_language_runs_or_is_a_visible_error(url, language):
    result, meta = verl_process_single_case(
        url, HELLO.get(language, "x"), None, "hi", 2, 128, language
    )
    if _runs_here(language):
        assert language in HELLO, f"add a hello program for {language}, which now runs here"
        assert result is True, meta
    else:
        # Not a silent -1 "sandbox_error": verl logs a failed API call with the status code.
        assert (result, meta["status"]) == (-1, "api_error")
        assert "422" in meta["api_request_error"]
        with pytest.raises(SdkError, match=f"code 422.*does not run '{language}'"):
            sdk_run_code(url, sdk_request("x", language))


def test_missing_language_is_fastapis_422_as_in_sandbox_fusion(url):
    reply = requests.post(url, json={"code": "print(1)"}, timeout=30)
    assert reply.status_code == 422
    assert [(e["type"], e["loc"]) for e in reply.json()["detail"]] == [
        ("missing", ["body", "language"])
    ]


def test_limits_above_the_caps_run_at_the_cap_and_say_so(url):
    # verl's reward with a generous timeout and memory: scored on the program, not -1.
    result, meta = verl_process_single_case(
        url, "print(sum(range(10)))", "", "45", 300, 8192, "python"
    )
    assert result is True, meta
    assert meta["api_response"]["clamped_limits"] == {
        "run_timeout": {"requested": 300.0, "applied": MAX_TIMEOUT_S},
        "compile_timeout": {"requested": 300.0, "applied": MAX_TIMEOUT_S},
        "memory_limit_MB": {"requested": 8192.0, "applied": float(MAX_MEMORY_MB)},
    }
    started = time.monotonic()
    result, meta = verl_process_single_case(
        url, "import time; time.sleep(30)", "", "", 300, 1024, "python"
    )
    assert (result, meta["status"]) == (-3, "timeout")
    assert time.monotonic() - started < MAX_TIMEOUT_S + 5
    hog = "x = bytearray(512 * 2**20)\nprint('allocated')"
    result, meta = verl_process_single_case(url, hog, "", "allocated", 2, 8192, "python")
    assert (result, meta["status"]) == (-2, "runtime_error"), meta
    # The SDK parses the body with the extra field and summarises the run as SandboxFusion's.
    ok = sdk_run_code(url, sdk_request("print(1)", "python", run_timeout=300))
    assert sdk_summary(ok) == "Success" and ok.run_result.stdout == "1\n"


def test_verl_tool_shows_the_model_stdout_and_stderr(url):
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)"
    text, meta = verl_tool_execute_code(url, code)
    assert text == "out\nerr\n"
    # The tool's default 30 s is over this replica's cap: it ran at the cap and was told.
    assert meta["api_response"]["clamped_limits"]["run_timeout"]["applied"] == MAX_TIMEOUT_S
    # A language not run here: the model reads verl's fallback, the trainer's log the 422.
    other = next(name for name in SANDBOX_FUSION_LANGUAGES if not _runs_here(name))
    text, meta = verl_tool_execute_code(url, "x", language=other)
    assert (text, meta["status"]) == ("no stdout here", "api_error")


def test_compile_timeout_bounds_no_python_run(url):
    # Python has no compile step: a tiny compile_timeout does not cut the run...
    run = sdk_run_code(
        url,
        sdk_request(
            "import time; time.sleep(1); print('done')",
            "python",
            compile_timeout=0.1,
            run_timeout=MAX_TIMEOUT_S,
        ),
    )
    assert sdk_summary(run) == "Success" and run.compile_result is None
    # ...and a large one does not extend it (killed at run_timeout, not at the sum).
    run = sdk_run_code(
        url,
        sdk_request("while True: pass", "python", compile_timeout=MAX_TIMEOUT_S, run_timeout=0.5),
    )
    assert sdk_summary(run) == "RunTimeout" and run.run_result.execution_time < MAX_TIMEOUT_S


def test_files_and_fetch_files_as_sandbox_fusion_keys_them(url):
    code = (
        "import os\nprint(open('in.txt').read(), os.path.exists('absent.txt'))\n"
        "open('out.bin', 'wb').write(b'\\x00\\xff')"
    )
    run = sdk_run_code(
        url,
        sdk_request(
            code,
            "python",
            files={"in.txt": base64.b64encode(b"hello").decode(), "absent.txt": None},
            fetch_files=["./out.bin", "never_written.txt"],
        ),
    )
    assert run.run_result.stdout == "hello False\n"
    assert {k: base64.b64decode(v) for k, v in run.files.items()} == {"./out.bin": b"\x00\xff"}


@pytest.mark.parametrize(
    "fields",
    [
        {"memory_limit_MB": 8},
        {"files": {"../escape.txt": ""}},
        {"files": {"a.txt": "not base64!"}},
    ],
)
def test_requests_the_sandbox_refuses_are_visible_errors(url, fields):
    with pytest.raises(SdkError, match="code 422.*rejected"):
        sdk_run_code(url, sdk_request("print(1)", "python", **fields))
