"""The hold in front of a private-tmpfs run, and finding the run's process: on plain processes
(the real bwrap path is tests/integration/test_sandbox_nonroot.py)."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agentrl.sandbox.private_tmpfs import (
    RELEASE,
    await_hold,
    hold_argv,
    sandbox_pid,
    supports_size,
)


def spawn(argv):
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_the_program_starts_only_after_the_release():
    proc = spawn(hold_argv(["cat"]))
    await_hold(proc)
    out, _ = proc.communicate(RELEASE + b"the program's stdin\n", timeout=30)
    assert out == b"the program's stdin\n" and proc.returncode == 0


def test_a_sandbox_that_exits_before_its_hold_says_why():
    proc = spawn(["sh", "-c", "echo 'bwrap: Creating new namespace failed' >&2; exit 1"])
    with pytest.raises(RuntimeError, match="Creating new namespace failed"):
        await_hold(proc)
    proc.wait()


def test_a_line_other_than_the_hold_is_refused():
    proc = spawn(["sh", "-c", "echo something-else; sleep 30"])
    with pytest.raises(RuntimeError, match="not its ready line"):
        await_hold(proc)
    proc.kill()
    proc.wait()


def test_a_child_in_the_services_own_mount_namespace_is_refused():
    proc = spawn(["sh", "-c", "sleep 30; true"])  # sh with one child, no namespaces
    children = f"/proc/{proc.pid}/task/{proc.pid}/children"
    try:
        deadline = time.monotonic() + 30
        while not Path(children).read_text().split():
            assert time.monotonic() < deadline, "sh never started its child"
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="mount namespace of its own"):
            sandbox_pid(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_the_installed_bwrap_has_size():
    assert supports_size(shutil.which("bwrap"))  # scripts/setup.sh installs bubblewrap 0.8
