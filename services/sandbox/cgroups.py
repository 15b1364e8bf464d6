"""cgroup v1 groups for sandboxed executions: memory, pids and CPU limits, usage, tree kill.

`CgroupParent.detect(name)` creates `<controller>/<own cgroup>/<name>` under each v1 controller
mount in /sys/fs/cgroup (nested under the service's own group, so its limits still apply) and
returns None when that is impossible (no v1 mounts, not root, read-only cgroupfs); backends then
fall back to rlimits. A `Cgroup` is one child group per slot or session, reused across runs:
limits are set per run, usage is read per run, and `kill_all` SIGKILLs every process in it
until it is empty, which reaches processes that escaped the process group with setsid().

A process joins a group by writing its pid to `cgroup.procs`; `join_script` gives the shell
lines that do it before `exec`, so nothing of the untrusted program ever runs outside the group.
`Cgroup.of_process(pid)` wraps groups someone else made (a Docker container's): the docker
backend sets per-run limits, reads usage and kills the processes of one uid through it.

What this module does NOT cover: cgroup v2 (the unified hierarchy: agentrl.sandbox.cgroup_v2,
with the same Cgroup interface), I/O bandwidth (blkio), and memory that the kernel does not
charge to a group.
"""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# memory for limits and OOM detection, pids against fork bombs, cpu for a CPU quota, cpuacct
# for CPU time. cpu and cpuacct are often co-mounted as "cpu,cpuacct".
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
# CFS period; the quota is cpu_cores times this.
CPU_PERIOD_US = 100_000
# kill_all retries while a fork bomb races it; pids.max bounds how many it can make per round.
KILL_ROUNDS = 200
KILL_ROUND_SLEEP_S = 0.005
# Removing a group whose last process just exited can fail with EBUSY for some milliseconds.
RMDIR_ATTEMPTS = 50
RMDIR_RETRY_SLEEP_S = 0.02


def _own_path(controller: str) -> str:
    """This process's cgroup path in the hierarchy that holds `controller` ('/' at the root)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return "/"


@dataclass
class Cgroup:
    """One group per controller; `paths[controller]` is its directory."""

    paths: dict[str, Path]
    limits: tuple[int, int, float] | None = field(default=None, compare=False)
    """The limits last written by set_limits (None: unknown); equal ones are not rewritten."""

    def _write(self, controller: str, name: str, value: str) -> None:
        (self.paths[controller] / name).write_text(value)

    def _read(self, controller: str, name: str) -> str:
        return (self.paths[controller] / name).read_text()

    def procs_files(self) -> list[Path]:
        return [path / "cgroup.procs" for path in self.paths.values()]

    def join_script(self) -> str:
        """sh lines that move the shell itself (`$$`) into every controller's group."""
        return "".join(f"echo $$ > {shlex.quote(str(p))}; " for p in self.procs_files())

    def set_limits(self, memory_mb: int, max_processes: int, cpu_cores: float) -> None:
        """Write the limits; a no-op when they equal the last ones written (the common case
        of a reused slot: 6 file writes saved per run)."""
        if self.limits == (memory_mb, max_processes, cpu_cores):
            return
        self.limits = None  # unknown until every write below succeeded
        limit = str(memory_mb * 1024 * 1024)
        memsw = self.paths["memory"] / "memory.memsw.limit_in_bytes"
        # memsw (memory + swap) must stay >= memory: raise it first when growing, after when not.
        try:
            if memsw.exists():
                memsw.write_text(limit)
            self._write("memory", "memory.limit_in_bytes", limit)
        except OSError:
            self._write("memory", "memory.limit_in_bytes", limit)
            memsw.write_text(limit)
        self._write("pids", "pids.max", str(max_processes))
        self._write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
        self._write("cpu", "cpu.cfs_quota_us", str(max(1000, int(cpu_cores * CPU_PERIOD_US))))
        self.limits = (memory_mb, max_processes, cpu_cores)

    def reset_usage(self) -> None:
        """Restart the peak counter from the current usage (the page cache charged by earlier
        runs stays charged: dropping it would make every run re-read the interpreter's files)."""
        self._write("memory", "memory.max_usage_in_bytes", "0")

    def oom_kills(self) -> int:
        """OOM kills in this group so far (cumulative)."""
        for line in self._read("memory", "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def memory_failures(self) -> int:
        """Times an allocation hit the limit (cumulative); OOM evidence on old kernels."""
        return int(self._read("memory", "memory.failcnt"))

    def peak_memory_bytes(self) -> int:
        return int(self._read("memory", "memory.max_usage_in_bytes"))

    def cpu_time_s(self) -> float:
        return int(self._read("cpuacct", "cpuacct.usage")) / 1e9

    def pids(self, uid: int | None = None, exclude: AbstractSet[int] = frozenset()) -> list[int]:
        """Processes in the group; with `uid`, only those whose real uid it is; never those in
        `exclude` (a slot sandbox's own processes, agentrl.sandbox.slot_executor)."""
        pids = [int(p) for p in self._read("pids", "cgroup.procs").split()]
        pids = [p for p in pids if p not in exclude]
        return pids if uid is None else [p for p in pids if _real_uid(p) == uid]

    def kill_all(
        self,
        timeout_s: float = KILL_ROUNDS * KILL_ROUND_SLEEP_S,
        uid: int | None = None,
        exclude: AbstractSet[int] = frozenset(),
    ) -> bool:
        """SIGKILL every process in the group (with `uid`: every one of that real uid; never
        those in `exclude`) until none is left; False if some survived."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids(uid, exclude)
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(KILL_ROUND_SLEEP_S)

    def wait_empty(
        self, timeout_s: float, uid: int | None = None, exclude: AbstractSet[int] = frozenset()
    ) -> bool:
        """Wait for processes that are already dying (a pid namespace tears down asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while self.pids(uid, exclude):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def destroy(self) -> None:
        self.kill_all()
        for path in self.paths.values():
            _rmdir_retrying(path)

    @classmethod
    def of_process(cls, pid: int, root: Path = CGROUP_ROOT) -> Cgroup | None:
        """The v1 groups `pid` belongs to (e.g. a Docker container's), or None when a controller
        is not mounted as v1 or the group is not visible from here."""
        owned: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(","):
                owned[name] = path
        paths: dict[str, Path] = {}
        for controller in CONTROLLERS:
            mount = next(
                (
                    m
                    for m in root.glob("*")
                    if controller in m.name.split(",") and (m / "cgroup.procs").exists()
                ),
                None,
            )
            if mount is None or controller not in owned:
                return None
            paths[controller] = mount / owned[controller].lstrip("/")
            if not (paths[controller] / "cgroup.procs").exists():
                return None
        return cls(paths)


@dataclass
class CgroupParent:
    """The service's own group per controller, under which slot and session groups live."""

    paths: dict[str, Path]
    version = "cgroup v1"

    @classmethod
    def detect(cls, name: str, root: Path = CGROUP_ROOT) -> CgroupParent | None:
        """Create `name` under every v1 controller, or None if any controller is unusable."""
        paths: dict[str, Path] = {}
        for controller in CONTROLLERS:
            mount = next(
                (
                    m
                    for m in root.glob("*")
                    if controller in m.name.split(",") and (m / "cgroup.procs").exists()
                ),
                None,
            )
            if mount is None:
                return None
            paths[controller] = mount / _own_path(controller).lstrip("/") / name
        try:
            for path in paths.values():
                path.mkdir(exist_ok=True)
        except OSError:
            return None
        return cls(paths)

    @staticmethod
    def sweep_stale(prefix: str, root: Path = CGROUP_ROOT) -> int:
        """Remove `<prefix><pid>-*` groups left by a service process that died (crash, SIGKILL):
        kill what still runs in them, then rmdir. Returns how many parents were removed."""
        removed = 0
        for controller in CONTROLLERS:
            for mount in [m for m in root.glob("*") if controller in m.name.split(",")]:
                base = mount / _own_path(controller).lstrip("/")
                for parent in base.glob(f"{prefix}*"):
                    pid = parent.name[len(prefix) :].split("-")[0]
                    if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                        continue
                    for child in [c for c in parent.iterdir() if c.is_dir()]:
                        if controller == "pids":
                            Cgroup({"pids": child}).kill_all()
                        try:
                            child.rmdir()
                        except OSError:
                            pass
                    try:
                        parent.rmdir()
                        removed += 1
                    except OSError:
                        pass
        return removed

    def weigh_as(self, num_tasks: int) -> None:
        """Give the sandboxes together the CPU weight of `num_tasks` ordinary processes.

        cgroup v1 schedules a group as one entity with cpu.shares 1024 (one process's worth)
        against its siblings; without this, N busy sandboxes would share one process's slice
        whenever the host is busy."""
        (self.paths["cpu"] / "cpu.shares").write_text(str(1024 * max(1, num_tasks)))

    def child(self, name: str) -> Cgroup:
        group = Cgroup({c: p / name for c, p in self.paths.items()})
        for path in group.paths.values():
            path.mkdir(exist_ok=True)
        return group

    def destroy(self) -> None:
        """Remove the parent and any child left behind (children should be destroyed first)."""
        for path in self.paths.values():
            for child in [c for c in path.iterdir() if c.is_dir()]:
                _rmdir_retrying(child)
            _rmdir_retrying(path)


def _real_uid(pid: int) -> int | None:
    """Real uid of `pid` (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _rmdir_retrying(path: Path) -> bool:
    """rmdir a cgroup; a just-emptied child goes offline asynchronously (EBUSY for a moment)."""
    for _ in range(RMDIR_ATTEMPTS):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(RMDIR_RETRY_SLEEP_S)
    return False
