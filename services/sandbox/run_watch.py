"""Memory and CPU of all processes of a run together, without cgroups: sampled, enforced.

Without a memory cgroup (the service not root, or a host without a usable one) the kernel
bounds each process by RLIMIT_AS alone, so a run of N processes may hold N times its limit;
without a cpu cgroup nothing bounds a run's share of the CPUs (RLIMIT_CPU caps CPU seconds,
not the rate). `RunWatch` closes most of both gaps: one thread samples every watched run every
`SAMPLE_INTERVAL_S` through /proc (as the owner of the run's user namespace, no root needed).

Memory: it adds up what the run's processes hold (/proc/<pid>/smaps_rollup `Pss_Anon` +
`Pss_Shmem`, the proportional share, so pages a forked child still shares with its parent
count once; read only when the cheap sum of resident sizes from /proc/<pid>/statm, an upper
bound, passes the limit) and kills the run the first time the sum passes its limit; the backend then
reports status `oom`. A run is killed within one sample of holding more than its limit; between
samples it can pass the limit by what it allocates in that time, never more than RLIMIT_AS per
process (memory_mb + 256 MB) times the processes it may have (max_processes). It is not a
kernel limit: no allocation fails, the run is killed after it. Needs Linux >= 5.10 (Pss_Anon).

The run's files count too, as a memory cgroup charges them: /work, /tmp and /dev/shm are tmpfs
(agentrl.sandbox.private_tmpfs, or a slot's tmpfs as root), memory that a process's smaps shows
only while it maps the file, so each sample adds what those file systems hold (fstatfs, each
file system once). The watch opens them as O_PATH fds through /proc/<pid>/root of a process of
the run (once bwrap has moved it into the run's own root), keeps them until the watch ends and
counts only tmpfs (a slot dir on the host's disk is disk, bounded per file by RLIMIT_FSIZE). So a run holding 20 MB in its processes and
40 MB of files under memory_mb=48 is killed and reported `oom` (`Watched.reason` says which).
File pages of the host (page cache of /usr) are not counted.

CPU: a token bucket per run, filled at `cpu_cores` CPU seconds per wall second (at most
`CPU_BURST_S` x cpu_cores ahead) and drained by the CPU time of the run's processes (utime +
stime, plus what they reaped of their children); when it runs dry every process of the run is
SIGSTOPped (through pidfds, so never a reused pid) until the bucket has refilled, then
SIGCONTinued. Like cgroup v1's CFS quota, a run of 4 busy processes with cpu_cores 1 gets one
core's worth, only at the sample's granularity instead of the scheduler's; a process that exits
between samples takes its last < 50 ms of CPU uncounted.

A one-shot run is watched for its run (`watching_process`); a session's interpreter from its
start to its stop (`add_process` ... `remove`, agentrl.sandbox.sessions), between calls too: a
thread the program left running in it is paused at the session's quota, and the session is
killed past its memory limit, files it keeps in /work between calls included. Each watched run
or session costs one sample per 50 ms (docs/sandbox.md gives the measured cost).

What this does NOT cover: processes of the run that escaped its process tree (none can: bwrap's
pid namespace adopts orphans); a child seen alive by a sample, then reaped after a later one, has
its CPU time counted twice (alive, then in its parent's reaped-children time); a tmpfs file the
run also maps (an mmap of a file in /work, a multiprocessing.shared_memory block in /dev/shm)
counts twice once the exact sum is taken, as a file and as mapped shared memory (a memory cgroup
counts it once); a run's files written and its processes exited within one sample are not seen.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agentrl.sandbox.leftovers import session_pids

# How often each run is sampled: a memory bomb allocating 1 GB/s passes its limit by ~50 MB.
SAMPLE_INTERVAL_S = 0.05
# The fields of smaps_rollup that are memory the process holds (not a file's page cache).
HELD_FIELDS = ("Pss_Anon", "Pss_Shmem")
# CPU seconds per core a run may run ahead of its quota before it is paused: more than the
# sampling jitter, so a single busy process under cpu_cores >= 1 is never paused.
CPU_BURST_S = 0.2
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# Where a run writes, under its root: tmpfs mounts (its own one, or a slot's and /dev/shm's as
# root) or, without either, a host dir on disk (not memory: not counted).
WRITABLE_PLACES = ("work", "tmp", "dev/shm")
# statfs f_type of tmpfs (linux/magic.h).
TMPFS_MAGIC = 0x01021994
PLACE_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MEGABYTE = 1 << 20
# The service's own root: a process of the run still there has not been moved into the run's.
_HOST_ROOT = (os.stat("/").st_dev, os.stat("/").st_ino)


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


def process_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and of the children it has reaped, in seconds (0 once gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS_PER_S


def parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return 0
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def process_rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` from /proc/<pid>/statm (~30x cheaper than smaps_rollup; an
    upper bound of what process_memory_bytes counts); 0 once gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def supported() -> bool:
    """Whether this kernel reports Pss_Anon (Linux >= 5.10)."""
    try:
        return "Pss_Anon:" in Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return False


class StatFs(ctypes.Structure):
    """`struct statfs` of 64-bit Linux (glibc, x86-64 and aarch64)."""

    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


_LIBC = ctypes.CDLL(None, use_errno=True)


def tmpfs_used_bytes(fd: int) -> int | None:
    """Bytes the file system of `fd` holds if it is a tmpfs; None otherwise (or on error)."""
    buf = StatFs()
    if _LIBC.fstatfs(fd, ctypes.byref(buf)) != 0 or buf.f_type != TMPFS_MAGIC:
        return None
    return (buf.f_blocks - buf.f_bfree) * buf.f_bsize


def open_tmpfs_places(pid: int) -> list[int] | None:
    """O_PATH fds of the distinct tmpfs file systems at /work, /tmp and /dev/shm of `pid`'s
    root (no link followed; a place on the host's disk left out); None while `pid` is not yet
    in a root of its own with a /work (bwrap still setting up), or is gone."""
    root = f"/proc/{pid}/root"
    try:
        own = os.stat(root)
    except OSError:
        return None
    if (own.st_dev, own.st_ino) == _HOST_ROOT:
        return None
    fds: dict[int, int] = {}
    try:
        for place in WRITABLE_PLACES:
            try:
                fd = os.open(f"{root}/{place}", PLACE_FLAGS)
            except OSError:
                if place == "work":
                    return None  # not the run's own root yet
                continue
            device = os.fstat(fd).st_dev
            if device in fds or tmpfs_used_bytes(fd) is None:
                os.close(fd)
            else:
                fds[device] = fd
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return list(fds.values())


@dataclass
class Watched:
    root_pid: int
    limit_bytes: int
    kill: Callable[[], None]
    cpu_cores: float = 0.0
    """CPU quota in cores (0: none)."""
    exceeded: bool = False
    peak_bytes: int = 0
    """Largest sum seen: resident bytes, or the proportional count once that passed the limit,
    plus the run's tmpfs files."""
    tmpfs_bytes: int = 0
    """What the run's tmpfs mounts held at the last sample."""
    reason: str = ""
    """Why the run was killed (set with `exceeded`): what its processes and its files held."""
    tmpfs_fds: list[int] | None = None
    """O_PATH fds of the run's tmpfs mounts (None until found; closed by `RunWatch.remove`)."""
    done: bool = False
    """Set when the watch ends: `kill` is never called after that (its pidfd is closed)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    cpu_s: float = 0.0
    sampled_at: float = 0.0
    tokens_s: float = 0.0
    paused: dict[int, int] = field(default_factory=dict)
    """pid -> pidfd of each process the CPU quota has SIGSTOPped."""
    pauses: int = 0
    on_end: Callable[[], None] | None = None
    """Run once by `RunWatch.remove` (closes `watching_process`'s pidfd)."""


class RunWatch:
    """One sampling thread for every run of a backend; started with the first run."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._watched: dict[int, Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self, root_pid: int, limit_bytes: int, kill: Callable[[], None], cpu_cores: float = 0.0
    ) -> Watched:
        """Watch the processes under `root_pid` until `remove`; `kill` ends the run."""
        watched = Watched(root_pid, limit_bytes, kill, cpu_cores)
        with self._lock:
            self._watched[id(watched)] = watched
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="run-watch", daemon=True)
                self._thread.start()
        return watched

    def remove(self, watched: Watched) -> None:
        """End the watch of `watched` (again: nothing): its paused processes are continued,
        `kill` is never called after, `on_end` runs once."""
        with self._lock:
            self._watched.pop(id(watched), None)
        with watched.lock:
            if watched.done:
                return
            watched.done = True
            _resume(watched)
            for fd in watched.tmpfs_fds or ():
                os.close(fd)
            watched.tmpfs_fds = None
            if watched.on_end is not None:
                watched.on_end()

    @contextmanager
    def watching(
        self, root_pid: int, limit_bytes: int, kill: Callable[[], None], cpu_cores: float = 0.0
    ) -> Iterator[Watched]:
        """`add` for the block, `remove` after it."""
        watched = self.add(root_pid, limit_bytes, kill, cpu_cores)
        try:
            yield watched
        finally:
            self.remove(watched)

    def add_process(
        self, proc: subprocess.Popen, limit_bytes: int, cpu_cores: float = 0.0
    ) -> Watched:
        """`add` the tree under `proc` (bwrap, outside the run's namespaces), killing `proc`
        through a pidfd (never a reused pid; closed by `remove`); bwrap's child dies with it.
        A session's interpreter is watched so from its start to its stop (sessions.py)."""
        pidfd = os.pidfd_open(proc.pid)

        def kill() -> None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

        try:
            watched = self.add(proc.pid, limit_bytes, kill, cpu_cores)
        except BaseException:
            os.close(pidfd)
            raise
        with watched.lock:
            watched.on_end = lambda: os.close(pidfd)
        return watched

    @contextmanager
    def watching_process(
        self, proc: subprocess.Popen, limit_bytes: int, cpu_cores: float = 0.0
    ) -> Iterator[Watched]:
        """`add_process` for the block, `remove` after it."""
        watched = self.add_process(proc, limit_bytes, cpu_cores)
        try:
            yield watched
        finally:
            self.remove(watched)

    def sample(self, watched: Watched) -> None:
        """Add up the run's processes and files now; kill it the first time the sum passes its
        limit; pause or resume it by its CPU quota."""
        pids = session_pids(watched.root_pid, None) - {watched.root_pid}
        if watched.tmpfs_fds is None:
            self._find_tmpfs(watched, pids)
        files = sum(tmpfs_used_bytes(fd) or 0 for fd in watched.tmpfs_fds or ())
        # Resident memory bounds the proportional count from above: the costly exact sum is
        # needed only when the cheap one passes the limit.
        held = sum(process_rss_bytes(pid) for pid in pids)
        if held + files > watched.limit_bytes:
            held = sum(process_memory_bytes(pid) for pid in pids)
        watched.tmpfs_bytes = files
        watched.peak_bytes = max(watched.peak_bytes, held + files)
        now, cpu_s = time.monotonic(), sum(process_cpu_s(pid) for pid in pids)
        with watched.lock:
            if watched.done:
                return
            if held + files > watched.limit_bytes and not watched.exceeded:
                watched.exceeded = True
                watched.reason = (
                    f"{(held + files) // MEGABYTE} MB held: {held // MEGABYTE} MB by its "
                    f"processes, {files // MEGABYTE} MB by its files in /work, /tmp and /dev/shm"
                )
                watched.kill()
            if watched.cpu_cores <= 0:
                return
            if watched.sampled_at:
                used_s = max(0.0, cpu_s - watched.cpu_s)  # an exited process lowers the sum
                refill_s = watched.cpu_cores * (now - watched.sampled_at)
                burst_s = CPU_BURST_S * watched.cpu_cores
                watched.tokens_s = min(burst_s, watched.tokens_s + refill_s - used_s)
            watched.cpu_s, watched.sampled_at = cpu_s, now
            if watched.tokens_s < 0:
                _pause(watched, pids)
            elif watched.paused:
                _resume(watched)

    @staticmethod
    def _find_tmpfs(watched: Watched, pids: set[int]) -> None:
        """Open the run's tmpfs mounts through the first process of the run (by pid) that
        bwrap has moved into the run's own root; kept once found (the mounts never change)."""
        for pid in sorted(pids):
            fds = open_tmpfs_places(pid)
            if fds is None:
                continue
            # A pid reused since the tree was listed has a parent outside it.
            keep = parent_pid(pid) in pids | {watched.root_pid}
            with watched.lock:
                if keep and not watched.done:
                    watched.tmpfs_fds, fds = fds, []
            for fd in fds:
                os.close(fd)
            return

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


def _pause(watched: Watched, pids: set[int]) -> None:
    """SIGSTOP each of `pids` not yet paused, through a pidfd opened while it is still a
    child of the run's tree (a pid reused by another process is never signalled)."""
    for pid in set(watched.paused) - pids:  # gone since it was paused (a session lives long)
        os.close(watched.paused.pop(pid))
    if not watched.paused:
        watched.pauses += 1
    for pid in pids - set(watched.paused):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone
        if parent_pid(pid) not in pids | {watched.root_pid}:
            os.close(pidfd)
            continue
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        except ProcessLookupError:
            os.close(pidfd)
            continue
        watched.paused[pid] = pidfd


def _resume(watched: Watched) -> None:
    for pidfd in watched.paused.values():
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        except ProcessLookupError:
            pass
        os.close(pidfd)
    watched.paused.clear()
