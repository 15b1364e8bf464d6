"""The sandbox launcher (agentrl.sandbox.launch) against the shell prologue and setpriv it
replaces: a run gets the same rlimits, ids, capabilities, seccomp state and cgroup either way,
and a launcher step that fails executes nothing."""

import dataclasses
import os
import subprocess

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.bwrap import BwrapBackend
from agentrl.sandbox.interface import ExecutionRequest, Status
from agentrl.sandbox.launch import build

# What a run can see of how it was started: every rlimit, its ids and groups, capability
# sets, no_new_privs and seccomp (bash: it runs cold, through the backend's current argv).
PROBE = (
    "cat /proc/self/limits\n"
    "grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp|Seccomp_filters):' "
    "/proc/self/status\n"
)
# A busy loop that prints the CPU time bash itself used (`times`: user and system), which the
# slot's cgroup must count too (the run joined it).
BUSY = "i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); done; times"
DISK_MB = 16


@pytest.fixture(scope="module")
def backend():
    backend = BwrapBackend(SandboxConfig(max_concurrency=1, disk_mb=DISK_MB), num_slots=1)
    yield backend
    backend.close()


def probe(backend, code):
    result = backend.execute(
        ExecutionRequest(code=code, language="bash", timeout_s=10, memory_mb=256)
    )
    assert result.status == Status.OK, result
    return result


def test_a_run_is_started_alike_through_the_launcher_and_through_sh(backend):
    assert backend.tools.launcher is not None, "cc is installed here: the launcher must build"
    launched = probe(backend, PROBE).stdout
    with_launcher = backend.tools
    backend.tools = dataclasses.replace(with_launcher, launcher=None)
    try:
        assert probe(backend, PROBE).stdout == launched
        counted_by_shell = counted(probe(backend, BUSY))
    finally:
        backend.tools = with_launcher
    lines = launched.splitlines()
    assert any(line.split()[-3:-1] == ["0", "0"] for line in lines if "core file size" in line)
    size = str(DISK_MB << 20)
    assert any(line.split()[-3:-1] == [size, size] for line in lines if "Max file size" in line)
    assert any(line.split()[-3:-1] == ["1024", "1024"] for line in lines if "open files" in line)
    if os.geteuid() == 0:
        uid = str(SandboxConfig().sandbox_uid)
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in lines
        assert "Groups:" in [line.rstrip() for line in lines]  # no supplementary group
    assert "CapEff:\t0000000000000000" in lines and "Seccomp:\t2" in lines
    if backend.cgroups is not None:  # the run's CPU is counted where its limits are
        assert counted(probe(backend, BUSY)) and counted_by_shell


def counted(result):
    """Whether the slot's cgroup counted at least the CPU the run itself reports using."""
    own = result.stdout.splitlines()[0]  # the shell's user and system time: 0m0.512s 0m0.004s
    user, system = (float(part[2:-1]) for part in own.split())
    return result.cpu_time_s >= user + system > 0


def test_a_launcher_step_that_fails_is_a_sandbox_error(backend):
    with_launcher = backend.tools
    backend.tools = dataclasses.replace(with_launcher, seccomp_filter="/nonexistent/filter")
    for slot in backend._all:  # a slot sandbox runs the launcher when it starts again
        slot.close()
    try:
        result = backend.execute(
            ExecutionRequest(code="echo ran", language="bash", timeout_s=10, memory_mb=256)
        )
    finally:
        backend.tools = with_launcher
    assert result.status == Status.SANDBOX_ERROR and result.stdout == ""
    assert "agentrl-launch: open /nonexistent/filter" in result.message
    assert probe(backend, "echo ok").stdout == "ok\n"


@pytest.mark.parametrize(
    "step",
    [
        ["-j", "/nonexistent/cgroup.procs"],
        ["-r", "nofile=many"],
        ["-r", "stack=1"],
        ["-f", "5=/nonexistent"],
        ["-u", "65534"],
        ["-x", "1"],
        [],
    ],
    ids=["join", "rlimit value", "rlimit name", "open", "uid without gid", "flag", "no program"],
)
def test_the_launcher_executes_nothing_after_a_failed_step(tmp_path, step):
    binary = build(tmp_path)
    assert binary is not None
    argv = [binary, *step, "--", "/bin/echo", "ran"] if step else [binary, "--"]
    result = subprocess.run(argv, capture_output=True, check=False)
    assert (result.returncode, result.stdout) == (127, b"")
    assert result.stderr.startswith(b"agentrl-launch: ")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_the_launcher_drops_every_id_and_group_for_good(tmp_path):
    binary = build(tmp_path)
    code = (
        "import os\nprint(os.getresuid(), os.getresgid(), os.getgroups())\n"
        "try:\n    os.setuid(0)\nexcept PermissionError:\n    print('no way back')"
    )
    argv = [binary, "-u", "65534", "-g", "65533", "--", "/usr/bin/python3", "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out == "(65534, 65534, 65534) (65533, 65533, 65533) []\nno way back\n"
