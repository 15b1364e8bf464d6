"""MemoryWatch: the processes of a run are added up, and the run is killed once past its limit.

Real processes, sampled by hand (the watch's own thread is set to wake once an hour), so the
outcome does not depend on timing."""

import subprocess
import sys

import pytest

from agentrl.sandbox.memory_watch import MemoryWatch, process_memory_bytes, supported

pytestmark = pytest.mark.skipif(not supported(), reason="needs Pss_Anon (Linux >= 5.10)")

# A parent and two forked children, each writing 40 MB of its own, then waiting.
HOLDERS = (
    "import os, sys, time\n"
    "for _ in range(2):\n    if os.fork() == 0:\n        break\n"
    "held = bytearray(40 << 20)\nheld[::4096] = b'x' * len(held[::4096])\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\ntime.sleep(120)\n"
)


def start_holders() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDERS], stdout=subprocess.PIPE)
    for _ in range(3):
        assert proc.stdout.readline() == b"ready\n"
    return proc


def test_a_run_over_its_limit_together_is_killed():
    watch = MemoryWatch(interval_s=3600)
    proc = start_holders()
    try:
        with watch.watching_process(proc, 100 << 20) as watched:
            watch.sample(watched)
        assert watched.exceeded and watched.peak_bytes > 120 << 20
        assert proc.wait(30) == -9
    finally:
        proc.kill()
        proc.wait()
        watch.close()


def test_a_run_within_its_limit_is_left_alone():
    watch = MemoryWatch(interval_s=3600)
    proc = start_holders()
    try:
        with watch.watching_process(proc, 1 << 30) as watched:
            watch.sample(watched)
        assert not watched.exceeded and watched.peak_bytes > 120 << 20
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        watch.close()


def test_no_kill_after_the_watch_ended():
    watch = MemoryWatch(interval_s=3600)
    proc = start_holders()
    try:
        with watch.watching_process(proc, 1 << 20) as watched:
            pass
        watch.sample(watched)  # a sample racing the end of the run
        assert not watched.exceeded and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
        watch.close()


def test_a_gone_process_holds_nothing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_memory_bytes(proc.pid) == 0
