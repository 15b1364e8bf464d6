"""RunWatch: the processes of a run are added up with the files of its tmpfs mounts, killed once
past their memory limit, paused while ahead of their CPU quota and continued once back within it.

Real processes, sampled by hand (the watch's own thread is set to wake once an hour); waits are
bounded loops, so the outcome does not depend on the machine's load. The tmpfs case runs a real
bubblewrap sandbox with the private mounts (agentrl.sandbox.private_tmpfs)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.bwrap_argv import bwrap_args
from agentrl.sandbox.leftovers import session_pids
from agentrl.sandbox.private_tmpfs import supports_size
from agentrl.sandbox.run_watch import (
    RunWatch,
    open_tmpfs_places,
    process_memory_bytes,
    supported,
    tmpfs_used_bytes,
)

pytestmark = pytest.mark.skipif(not supported(), reason="needs Pss_Anon (Linux >= 5.10)")

# A parent and two forked children, each writing 40 MB of its own, then waiting. The parent
# stands for bwrap outside the run's namespaces: its own memory is not the run's.
HOLDERS = (
    "import os, sys, time\n"
    "for _ in range(2):\n    if os.fork() == 0:\n        break\n"
    "held = bytearray(40 << 20)\nheld[::4096] = b'x' * len(held[::4096])\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(120)\n"
)
SPINNERS = "import os\nfor _ in range(2):\n    os.fork()\nwhile True:\n    pass\n"


@contextmanager
def watched_tree(
    argv: list[str], ready_lines: int = 0
) -> Iterator[tuple[RunWatch, subprocess.Popen]]:
    """A watch sampled by hand and `argv` started in a session of its own, once it printed
    `ready_lines` lines; after the block every process of it is killed and the watch closed."""
    watch = RunWatch(interval_s=3600)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
    try:
        for _ in range(ready_lines):
            assert proc.stdout.readline() == b"ready\n"
        yield watch, proc
    finally:
        with suppress(ProcessLookupError):  # a group of one, killed by the watch and reaped
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        watch.close()


def python(source: str) -> list[str]:
    return [sys.executable, "-c", source]


def test_a_run_over_its_limit_together_is_killed():
    with watched_tree(python(HOLDERS), ready_lines=3) as (watch, proc):
        with watch.watching_process(proc, 64 << 20) as watched:
            watch.sample(watched)
        assert watched.exceeded and watched.peak_bytes > 80 << 20
        assert "MB by its processes" in watched.reason, watched.reason
        assert proc.wait(30) == -9


def test_a_run_within_its_limit_is_left_alone():
    with watched_tree(python(HOLDERS), ready_lines=3) as (watch, proc):
        with watch.watching_process(proc, 1 << 30) as watched:
            watch.sample(watched)
        assert not watched.exceeded and watched.peak_bytes > 80 << 20
        assert proc.poll() is None


def test_no_kill_after_the_watch_ended():
    with watched_tree(python(HOLDERS), ready_lines=3) as (watch, proc):
        with watch.watching_process(proc, 1 << 20) as watched:
            pass
        watch.sample(watched)  # a sample racing the end of the run
        assert not watched.exceeded and proc.poll() is None


def test_a_gone_process_holds_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_memory_bytes(proc.pid) == 0


def test_only_tmpfs_counts_as_files_in_memory():
    """A tmpfs's use is read through an fd of it; a directory on disk is not memory. A process
    still in the host's root (bwrap before its set-up) has no run tmpfs to find."""
    shm = os.open("/dev/shm", os.O_PATH | os.O_DIRECTORY)
    disk = os.open(Path(__file__).parent, os.O_PATH | os.O_DIRECTORY)
    try:
        if tmpfs_used_bytes(shm) is None:
            pytest.skip("this host's /dev/shm is not a tmpfs")
        assert tmpfs_used_bytes(shm) >= 0
        assert tmpfs_used_bytes(disk) is None
    finally:
        os.close(shm)
        os.close(disk)
    assert open_tmpfs_places(os.getpid()) is None


def sandboxed(script: str, disk_mb: int) -> list[str]:
    """bwrap with the private mounts of a non-root slot (/work, /tmp, /dev/shm: one tmpfs of
    `disk_mb`), running `script` in sh."""
    bwrap = shutil.which("bwrap")
    if bwrap is None or not supports_size(bwrap):
        pytest.skip("needs bubblewrap >= 0.5 (--size)")
    slot_dir = SimpleNamespace(private=True)
    args = bwrap_args(SandboxConfig(disk_mb=disk_mb), bwrap, slot_dir, sized_tmpfs=True)
    return [*args, "--", "/bin/sh", "-c", script]


# 12 MB of files in each of /work, /tmp and /dev/shm, then waiting.
FILES = (
    "for place in /work /tmp /dev/shm; do head -c 12582912 /dev/zero > $place/held || exit 1; "
    "done; echo ready; exec sleep 120"
)


def test_a_sandboxs_tmpfs_files_count_in_its_memory():
    """A sandbox holding 36 MB of files and a few MB of processes: its three places are one
    tmpfs (one fd), what it holds is counted; within 1 GB it is left alone, under 32 MB it is
    killed and the reason says its files held the most. The fds go with the watch."""
    with watched_tree(sandboxed(FILES, disk_mb=64), ready_lines=1) as (watch, proc):
        with watch.watching_process(proc, 1 << 30) as watched:
            watch.sample(watched)
            assert not watched.exceeded and watched.tmpfs_bytes >= 36 << 20
            assert len(watched.tmpfs_fds) == 1  # /work, /tmp and /dev/shm: one file system
            watched.limit_bytes = 32 << 20
            watch.sample(watched)
            assert watched.exceeded and "36 MB by its files" in watched.reason, watched.reason
        assert proc.wait(30) == -9
        assert watched.tmpfs_fds is None


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        stat = handle.read()
    return stat[stat.rfind(")") + 2]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_run_ahead_of_its_cpu_quota_is_paused_then_continued():
    """Three busy processes against a quota of 0.05 cores: paused (every one stopped) once
    ahead, continued once the quota has caught up, and never left stopped."""
    with watched_tree(python(SPINNERS)) as (watch, proc):
        wait_for(lambda: len(session_pids(proc.pid, None)) == 4, "the spinners did not start")
        with watch.watching(proc.pid, 1 << 40, proc.kill, cpu_cores=0.05) as watched:

            def sampled_paused() -> bool:
                watch.sample(watched)
                return bool(watched.paused)

            wait_for(sampled_paused, "four busy processes were never paused")
            stopped = set(watched.paused)
            # The root stands for bwrap outside the run's namespaces: never stopped.
            assert stopped == session_pids(proc.pid, None) - {proc.pid} and len(stopped) == 3
            wait_for(lambda: all(state(pid) == "T" for pid in stopped), "not stopped")
            wait_for(lambda: not sampled_paused(), "the paused run was never continued")
            wait_for(lambda: all(state(pid) != "T" for pid in stopped), "not continued")
            wait_for(sampled_paused, "the continued run was not paused again")
        assert watched.pauses >= 2
        wait_for(lambda: all(state(pid) != "T" for pid in stopped), "left stopped at the end")


def test_without_a_quota_nothing_is_paused():
    with watched_tree(python(SPINNERS)) as (watch, proc):
        with watch.watching(proc.pid, 1 << 40, proc.kill) as watched:
            for _ in range(5):
                watch.sample(watched)
                time.sleep(0.05)
        assert watched.pauses == 0 and not watched.paused


def test_a_watch_added_lasts_until_removed():
    """`add_process` (a session's interpreter, watched from its start to its stop, between
    calls too): paused while ahead of its quota with no block around it; `remove` continues
    it and ends the watch (again: nothing; no kill after it)."""
    with watched_tree(python(SPINNERS)) as (watch, proc):
        wait_for(lambda: len(session_pids(proc.pid, None)) == 4, "the spinners did not start")
        watched = watch.add_process(proc, 1 << 40, cpu_cores=0.05)

        def sampled_paused() -> bool:
            watch.sample(watched)
            return bool(watched.paused)

        wait_for(sampled_paused, "busy processes were never paused")
        stopped = set(watched.paused)
        wait_for(lambda: all(state(pid) == "T" for pid in stopped), "not stopped")
        watch.remove(watched)
        watch.remove(watched)
        assert watched.done and not watched.paused
        wait_for(lambda: all(state(pid) != "T" for pid in stopped), "left stopped after remove")
        watched.limit_bytes = 1
        watch.sample(watched)  # a sample racing the end of the session
        assert not watched.exceeded and proc.poll() is None
