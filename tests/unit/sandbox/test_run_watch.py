"""RunWatch: the processes of a run are added up, killed once past their memory limit, paused
while ahead of their CPU quota and continued once back within it.

Real processes, sampled by hand (the watch's own thread is set to wake once an hour); waits are
bounded loops, so the outcome does not depend on the machine's load."""

import os
import signal
import subprocess
import sys
import time

import pytest

from agentrl.sandbox.leftovers import session_pids
from agentrl.sandbox.run_watch import RunWatch, process_memory_bytes, supported

pytestmark = pytest.mark.skipif(not supported(), reason="needs Pss_Anon (Linux >= 5.10)")

# A parent and two forked children, each writing 40 MB of its own, then waiting. The parent
# stands for bwrap outside the run's namespaces: its own memory is not the run's.
HOLDERS = (
    "import os, sys, time\n"
    "for _ in range(2):\n    if os.fork() == 0:\n        break\n"
    "held = bytearray(40 << 20)\nheld[::4096] = b'x' * len(held[::4096])\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(120)\n"
)


def start_holders() -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDERS], stdout=subprocess.PIPE, start_new_session=True
    )
    for _ in range(3):
        assert proc.stdout.readline() == b"ready\n"
    return proc


def test_a_run_over_its_limit_together_is_killed():
    watch = RunWatch(interval_s=3600)
    proc = start_holders()
    try:
        with watch.watching_process(proc, 64 << 20) as watched:
            watch.sample(watched)
        assert watched.exceeded and watched.peak_bytes > 80 << 20
        assert proc.wait(30) == -9
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watch.close()


def test_a_run_within_its_limit_is_left_alone():
    watch = RunWatch(interval_s=3600)
    proc = start_holders()
    try:
        with watch.watching_process(proc, 1 << 30) as watched:
            watch.sample(watched)
        assert not watched.exceeded and watched.peak_bytes > 80 << 20
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watch.close()


def test_no_kill_after_the_watch_ended():
    watch = RunWatch(interval_s=3600)
    proc = start_holders()
    try:
        with watch.watching_process(proc, 1 << 20) as watched:
            pass
        watch.sample(watched)  # a sample racing the end of the run
        assert not watched.exceeded and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watch.close()


def test_a_gone_process_holds_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_memory_bytes(proc.pid) == 0


SPINNERS = "import os\nfor _ in range(2):\n    os.fork()\nwhile True:\n    pass\n"


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
    watch = RunWatch(interval_s=3600)
    proc = subprocess.Popen([sys.executable, "-c", SPINNERS], start_new_session=True)
    try:
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
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watch.close()


def test_without_a_quota_nothing_is_paused():
    watch = RunWatch(interval_s=3600)
    proc = subprocess.Popen([sys.executable, "-c", SPINNERS], start_new_session=True)
    try:
        with watch.watching(proc.pid, 1 << 40, proc.kill) as watched:
            for _ in range(5):
                watch.sample(watched)
                time.sleep(0.05)
        assert watched.pauses == 0 and not watched.paused
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watch.close()


def test_a_watch_added_lasts_until_removed():
    """`add_process` (a session's interpreter, watched from its start to its stop, between
    calls too): paused while ahead of its quota with no block around it; `remove` continues
    it and ends the watch (again: nothing; no kill after it)."""
    watch = RunWatch(interval_s=3600)
    proc = subprocess.Popen([sys.executable, "-c", SPINNERS], start_new_session=True)
    try:
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
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watch.close()
