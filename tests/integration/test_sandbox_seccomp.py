"""The bwrap backend's seccomp filter against the real service: every denied call fails with
EPERM inside the sandbox (clone3 with ENOSYS, so libc falls back to clone), ordinary programs
(Python with threads and subprocesses, bash pipelines, g++) still work, and the filter's fd does
not leak into the program."""

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox import seccomp
from agentrl.sandbox.executor import Sandbox
from agentrl.sandbox.interface import ExecutionRequest, Status

# Calls whose outcome without the filter is not EPERM here (they succeed or fail otherwise),
# so the second test proves the EPERM comes from the filter: ptrace(PTRACE_TRACEME), unshare(0),
# keyctl(KEYCTL_GET_KEYRING_ID, 0), perf_event_open(NULL...).
NOT_EPERM_WITHOUT_FILTER = ("ptrace", "unshare", "keyctl", "perf_event_open")

PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for name, number in json.loads(sys.argv[1] if len(sys.argv) > 1 else input()).items():
    ctypes.set_errno(0)
    result = libc.syscall(number, 0, 0, 0, 0, 0, 0)
    out[name] = 0 if result >= 0 else ctypes.get_errno()
print(json.dumps(out))
"""


def numbers() -> dict[str, int]:
    table = seccomp.SYSCALL_NUMBERS[seccomp.machine()]
    return {name: table[name] for name in seccomp.DENIED if name in table}


@pytest.fixture(scope="module")
def sandbox():
    sandbox = Sandbox(SandboxConfig(max_concurrency=2, queue_size=16))
    yield sandbox
    sandbox.close()


def probe(sandbox, calls):
    import json

    result = sandbox.execute(ExecutionRequest(code=PROBE, stdin=json.dumps(calls).encode()))
    assert result.status == Status.OK, result
    return json.loads(result.stdout)


def test_every_denied_call_fails_with_eperm(sandbox):
    import errno

    calls = {**numbers(), "clone3": seccomp.SYSCALL_NUMBERS[seccomp.machine()]["clone3"]}
    errors = probe(sandbox, calls)
    assert errors.pop("clone3") == errno.ENOSYS
    assert errors == dict.fromkeys(errors, errno.EPERM)


def test_the_eperm_comes_from_the_filter():
    import errno

    unfiltered = Sandbox(SandboxConfig(max_concurrency=1, queue_size=4, seccomp=False))
    try:
        errors = probe(unfiltered, {name: numbers()[name] for name in NOT_EPERM_WITHOUT_FILTER})
    finally:
        unfiltered.close()
    assert errno.EPERM not in errors.values(), errors


def test_ordinary_programs_still_work(sandbox):
    code = (
        "import os, subprocess, threading, multiprocessing\n"
        "def link(fd):\n"
        "    try: return os.readlink(f'/proc/self/fd/{fd}')\n"
        "    except OSError: return ''  # the listing's own fd, closed by now\n"
        "print([link(fd) for fd in os.listdir('/proc/self/fd')])\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "print(subprocess.run(['sh', '-c', 'seq 3 | tr 1 x | sort -r'], capture_output=True,"
        " text=True).stdout.split())\n"
        "with multiprocessing.Pool(2) as pool: print(pool.map(abs, [-1, -2]))\n"
    )
    result = sandbox.execute(ExecutionRequest(code=code))
    assert result.status == Status.OK, result
    fds, *rest = result.stdout.splitlines()
    assert rest == ["thread", "['x', '3', '2']", "[1, 2]"]
    assert "seccomp" not in fds and "agentrl" not in fds, fds  # the filter's fd was closed
    bash = sandbox.execute(
        ExecutionRequest(code="echo a b | wc -w; (sleep 0.1; echo bg) & wait", language="bash")
    )
    assert (bash.status, bash.stdout.split()) == (Status.OK, ["2", "bg"])


def test_gpp_compiles_and_runs_under_the_filter(sandbox):
    code = (
        "import subprocess\n"
        "open('a.cpp', 'w').write('#include <iostream>\\nint main(){std::cout<<6*7<<std::endl;}')\n"
        "subprocess.run(['g++', '-O0', '-o', 'a', 'a.cpp'], check=True)\n"
        "print(subprocess.run(['./a'], capture_output=True, text=True).stdout)\n"
    )
    result = sandbox.execute(ExecutionRequest(code=code, timeout_s=60, memory_mb=1024))
    assert (result.status, result.stdout.strip()) == (Status.OK, "42"), result
