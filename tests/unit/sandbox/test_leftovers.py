"""Finding and ending a session's leftover processes without a cgroup (through /proc), on a
real process tree the test starts."""

import subprocess
import time

from agentrl.sandbox.leftovers import _descendants, _descendants_by_scan, end_leftovers

# Sleep lengths no other process on the host uses, so the test finds exactly its own.
MARKERS = ("4242.61", "4242.62")


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_everything_but_the_kept_processes_is_ended():
    # root (kept) -> two children: a sleep, and a sh whose own child is a sleep
    script = f"sleep {MARKERS[0]} & sh -c 'sleep {MARKERS[1]}; true' & wait"
    root = subprocess.Popen(["sh", "-c", script])
    try:
        wait_for(lambda: len(_descendants(root.pid)) == 4)
        assert _descendants(root.pid) == _descendants_by_scan(root.pid)
        assert end_leftovers(root.pid, None, frozenset({root.pid})) == 3
        root.wait(timeout=5)  # its `wait` returns once its children are gone
        out = subprocess.run(
            ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
        ).stdout
        assert not [
            line
            for line in out.splitlines()
            if any(m in line for m in MARKERS) and not line.startswith("Z")
        ]
    finally:
        root.kill()
        root.wait()


def test_nothing_to_end_returns_zero_and_keeps_the_chain():
    root = subprocess.Popen(["sleep", MARKERS[0]])
    try:
        assert end_leftovers(root.pid, None, frozenset({root.pid})) == 0
        assert root.poll() is None
    finally:
        root.kill()
        root.wait()
