"""The runtime inside the sandbox, through the real service's SandboxFusion route (bwrap): the
scientific Python stack imports and computes, and C++ compiles and runs with SandboxFusion's
answers for a compile error, a runtime error, a run past run_timeout and a compile past
compile_timeout. The docker backend's image runs the same checks in test_sandbox_docker.py."""

import httpx
import pytest
from prometheus_client import CollectorRegistry

from agentrl.common.config import SandboxConfig
from agentrl.common.http import serve_in_thread
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.http_api import create_sandbox_app

pytestmark = pytest.mark.slow

SCIENCE = """
import numpy as np, scipy.linalg, sympy, pandas as pd
a = np.array([[2.0, 1.0], [1.0, 3.0]])
print(round(float(np.linalg.det(a)), 6), round(float(scipy.linalg.eigvalsh(a)[0]), 4))
x = sympy.symbols("x")
print(sympy.integrate(x**2, (x, 0, 3)))
print(pd.DataFrame({"v": [1, 2, 3]})["v"].sum())
"""
CPP_ECHO = (
    "#include <bits/stdc++.h>\nint main(){long n; std::cin >> n; std::cout << n * 2 << '\\n';}"
)


@pytest.fixture(scope="module")
def post():
    config = SandboxConfig(max_concurrency=2, queue_size=16, max_timeout_s=60)
    registry = CollectorRegistry()
    sandbox = Sandbox(config, registry=registry)
    http = serve_in_thread(create_sandbox_app(sandbox, token=None, registry=registry))
    with httpx.Client(base_url=http.url, timeout=120) as client:
        yield lambda **body: client.post("/run_code", json=body).json()
    http.stop()
    sandbox.close()


def test_numpy_scipy_sympy_pandas(post):
    answer = post(code=SCIENCE, language="python", run_timeout=30, memory_limit_MB=1024)
    assert answer["status"] == "Success", answer
    assert answer["run_result"]["stdout"].split("\n")[:3] == ["5.0 1.382", "9", "6"]


def test_cpp_runs_with_stdin(post):
    answer = post(code=CPP_ECHO, language="cpp", stdin="21\n", compile_timeout=30, run_timeout=5)
    assert answer["status"] == "Success", answer
    assert answer["run_result"]["stdout"] == "42\n"
    assert answer["compile_result"]["status"] == "Finished"
    assert answer["compile_result"]["return_code"] == 0


def test_cpp_compile_error_is_failed_with_the_compiler_output(post):
    answer = post(code="int main() { return x; }", language="cpp", compile_timeout=30)
    assert answer["status"] == "Failed" and answer["run_result"] is None, answer
    assert answer["compile_result"]["return_code"] == 1
    assert "'x' was not declared" in answer["compile_result"]["stderr"].replace("‘", "'").replace(
        "’", "'"
    )


def test_cpp_runtime_error_and_timeout(post):
    crash = post(code="int main(){ int *p = nullptr; return *p; }", language="cpp", run_timeout=5)
    assert crash["status"] == "Failed" and crash["run_result"]["status"] == "Finished", crash
    assert crash["run_result"]["return_code"] != 0
    loop = post(code="int main(){ for(;;); }", language="cpp", compile_timeout=30, run_timeout=1)
    assert loop["status"] == "Failed", loop
    assert loop["run_result"]["status"] == "TimeLimitExceeded"
    assert loop["compile_result"]["status"] == "Finished"


def test_compile_timeout_bounds_the_compile_step_only(post):
    # <bits/stdc++.h> takes seconds to compile; 0.05 s cannot do it, and the generous
    # run_timeout does not extend it.
    answer = post(code=CPP_ECHO, language="cpp", compile_timeout=0.05, run_timeout=30)
    assert answer["status"] == "Failed" and answer["run_result"] is None, answer
    assert answer["compile_result"]["status"] == "TimeLimitExceeded"
