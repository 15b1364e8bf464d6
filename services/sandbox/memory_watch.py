"""The memory of all processes of a run together, without a memory cgroup: sampled, enforced.

Without a memory cgroup (the service not root, or a host without a usable one) the kernel
bounds each process by RLIMIT_AS alone, so a run of N processes may hold N times its limit.
`MemoryWatch` closes most of that gap: one thread samples every watched run every
`SAMPLE_INTERVAL_S`, adds up what its processes hold (from /proc/<pid>/smaps_rollup:
`Pss_Anon` + `Pss_Shmem`, the proportional share, so pages a forked child still shares with
its parent count once) and kills the run the first time the sum passes its limit; the backend
then reports status `oom`. The service reads those files as the owner of the run's user
namespace (no root needed).

What holds, precisely: a run is killed within one sample of holding more than its limit
across all its processes; between samples it can allocate past the limit by what it allocates
in that time, never more than RLIMIT_AS per process (memory_mb + 256 MB) times the processes
it may have (max_processes). It is not a kernel limit: nothing stops an allocation, the run is
killed after it. File pages (page cache) and the run's tmpfs mounts (bounded by disk_mb) are
not counted. Needs Linux >= 5.10 for Pss_Anon; without it the watch counts nothing (said at
start-up by the backend).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agentrl.sandbox.leftovers import session_pids

# How often each run is sampled: a memory bomb allocating 1 GB/s passes its limit by ~50 MB.
SAMPLE_INTERVAL_S = 0.05
# The fields of smaps_rollup that are memory the process holds (not a file's page cache).
HELD_FIELDS = ("Pss_Anon", "Pss_Shmem")


def process_memory_bytes(pid: int) -> int:
    """Proportional anonymous + shared-memory bytes of `pid` (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in HELD_FIELDS:
            total += int(rest.split()[0]) * 1024
    return total


def supported() -> bool:
    """Whether this kernel reports Pss_Anon (Linux >= 5.10)."""
    try:
        return "Pss_Anon:" in Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return False


@dataclass
class Watched:
    root_pid: int
    limit_bytes: int
    kill: Callable[[], None]
    exceeded: bool = False
    peak_bytes: int = 0
    done: bool = False
    """Set when the watch ends: `kill` is never called after that (its pidfd is closed)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class MemoryWatch:
    """One sampling thread for every run of a backend; started with the first run."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._watched: dict[int, Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watching(
        self, root_pid: int, limit_bytes: int, kill: Callable[[], None]
    ) -> Iterator[Watched]:
        """Watch the processes under `root_pid` for the block; `kill` ends the run."""
        watched = Watched(root_pid, limit_bytes, kill)
        with self._lock:
            self._watched[id(watched)] = watched
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="memory-watch", daemon=True)
                self._thread.start()
        try:
            yield watched
        finally:
            with self._lock:
                self._watched.pop(id(watched), None)
            with watched.lock:
                watched.done = True

    @contextmanager
    def watching_process(self, proc: subprocess.Popen, limit_bytes: int) -> Iterator[Watched]:
        """`watching` the tree under `proc` (bwrap, outside the run's namespaces), killing
        `proc` through a pidfd (never a reused pid); bwrap's child dies with it."""
        pidfd = os.pidfd_open(proc.pid)

        def kill() -> None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

        try:
            with self.watching(proc.pid, limit_bytes, kill) as watched:
                yield watched
        finally:
            os.close(pidfd)

    def sample(self, watched: Watched) -> None:
        """Add up the run's processes now; kill it the first time the sum passes its limit."""
        held = sum(process_memory_bytes(pid) for pid in session_pids(watched.root_pid, None))
        watched.peak_bytes = max(watched.peak_bytes, held)
        with watched.lock:
            if held > watched.limit_bytes and not watched.exceeded and not watched.done:
                watched.exceeded = True
                watched.kill()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                runs = list(self._watched.values())
            for watched in runs:
                self.sample(watched)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
