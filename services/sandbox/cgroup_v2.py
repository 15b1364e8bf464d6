"""cgroup v2 groups for sandboxed runs, in a subtree delegated to the service (e.g. a pod's).

Most Kubernetes nodes run the unified hierarchy (cgroup v2) only. There a service, root or
not, can limit each run if its own cgroup is *delegated* to it: the directory and its
`cgroup.procs`, `cgroup.subtree_control` files writable by the service's uid (a container
runtime with cgroup namespaces and `nsdelegate` mounts the pod's cgroup at /sys/fs/cgroup;
see docs/sandbox.md for the pod settings). `CgroupV2Parent.detect(name)` then:

1. moves every process of the service's cgroup into a leaf `<own>/service` (cgroup v2 allows
   controllers in a subtree only for a group without processes of its own),
2. enables memory, pids and cpu for `<own>`'s children and creates `<own>/<name>` with the
   same for its children, and
3. returns the parent under which each slot or session gets a group: `memory.max` (swap off
   with `memory.swap.max` 0), `pids.max`, `cpu.max` per run; `memory.events` `oom_kill`,
   `memory.peak` and `cpu.stat` `usage_usec` for the outcome; `cgroup.kill` to end a run.

It returns None with the reason when any step is refused. `cgroup_version()` says which
hierarchy a host has: "v2" (unified at the root), "v1" (v1 controllers mounted; a hybrid
host's empty unified mount does not count) or "none".

What this module does NOT cover: verified on no real cgroup v2 node here (this repo's machine
runs cgroup v1; the unit tests check paths and values on a fake cgroupfs); `memory.peak` is
the group's peak since it was made (Linux < 6.12 cannot reset it, so a slot reports the peak
over its runs so far); I/O limits.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from agentrl.sandbox.cgroups import (
    CGROUP_ROOT,
    CONTROLLERS,
    CPU_PERIOD_US,
    KILL_ROUND_SLEEP_S,
    KILL_ROUNDS,
    Cgroup,
    CgroupParent,
)

# What each slot's group limits; enabled for the children of the service's own group.
V2_CONTROLLERS = ("memory", "pids", "cpu")
# The leaf the service's own processes move into (no processes may stay in a group whose
# children have controllers).
SERVICE_LEAF = "service"
# cgroup v2's default cpu.weight is one ordinary group's; the sandboxes weigh as N of them.
DEFAULT_CPU_WEIGHT = 100
MAX_CPU_WEIGHT = 10_000


def cgroup_version(root: Path = CGROUP_ROOT) -> str:
    """ "v2" when the unified hierarchy is mounted at `root`, "v1" when v1 controllers are,
    "none" otherwise."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    for mount in root.glob("*"):
        if (
            any(c in mount.name.split(",") for c in CONTROLLERS)
            and (mount / "cgroup.procs").exists()
        ):
            return "v1"
    return "none"


def own_path_v2(proc_cgroup: str) -> str:
    """The unified-hierarchy path (`0::/path`) in the text of /proc/<pid>/cgroup."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise ValueError("no cgroup v2 entry (0::) in /proc/self/cgroup")


def cpu_max(cpu_cores: float) -> str:
    """cpu.max for a quota of `cpu_cores` CPUs: '<quota_us> <period_us>'."""
    return f"{max(1000, int(cpu_cores * CPU_PERIOD_US))} {CPU_PERIOD_US}"


class CgroupV2(Cgroup):
    """One slot's or session's group in the unified hierarchy: Cgroup's interface (limits,
    usage, kill_all, join_script), the v2 files."""

    def __init__(self, path: Path) -> None:
        # Every "controller" is the same directory: join_script writes cgroup.procs once.
        super().__init__({"pids": path})
        self.path = path

    def _write(self, controller: str, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def _read(self, controller: str, name: str) -> str:
        return (self.path / name).read_text()

    def set_limits(self, memory_mb: int, max_processes: int, cpu_cores: float) -> None:
        if self.limits == (memory_mb, max_processes, cpu_cores):
            return
        self.limits = None
        self._write("memory", "memory.max", str(memory_mb * 1024 * 1024))
        if (self.path / "memory.swap.max").exists():
            self._write("memory", "memory.swap.max", "0")
        self._write("pids", "pids.max", str(max_processes))
        self._write("cpu", "cpu.max", cpu_max(cpu_cores))
        self.limits = (memory_mb, max_processes, cpu_cores)

    def reset_usage(self) -> None:
        """Nothing to reset: memory.peak is the group's peak since it was made."""

    def _keyed(self, name: str, key: str) -> int:
        for line in self._read("memory", name).splitlines():
            field_name, _, value = line.partition(" ")
            if field_name == key:
                return int(value)
        return 0

    def oom_kills(self) -> int:
        return self._keyed("memory.events", "oom_kill")

    def memory_failures(self) -> int:
        return self._keyed("memory.events", "max")

    def peak_memory_bytes(self) -> int:
        peak = self.path / "memory.peak"  # Linux >= 5.19
        return (
            int(peak.read_text()) if peak.exists() else int(self._read("memory", "memory.current"))
        )

    def cpu_time_s(self) -> float:
        return self._keyed("cpu.stat", "usage_usec") / 1e6

    def kill_all(
        self,
        timeout_s: float = KILL_ROUNDS * KILL_ROUND_SLEEP_S,
        uid: int | None = None,
        exclude: AbstractSet[int] = frozenset(),
    ) -> bool:
        """cgroup.kill (Linux >= 5.14) SIGKILLs the whole group at once, forks in flight
        included; then the SIGKILL rounds until it is empty (the fallback without it, and the
        only way when some processes must live)."""
        kill = self.path / "cgroup.kill"
        if uid is None and not exclude and kill.exists():
            kill.write_text("1")
        return super().kill_all(timeout_s, uid, exclude)

    def destroy(self) -> None:
        self.kill_all()
        try:
            self.path.rmdir()
        except OSError:
            pass


@dataclass
class CgroupV2Parent:
    """The service's group for its slots, `<own cgroup>/<name>`, with controllers enabled."""

    path: Path
    version = "cgroup v2"

    @classmethod
    def detect(
        cls, name: str, root: Path = CGROUP_ROOT, proc_cgroup: str | None = None
    ) -> tuple[CgroupV2Parent | None, str]:
        """The parent, or None and why not (to log: the start-up report names the fix).
        `proc_cgroup`: the text of /proc/self/cgroup (read when None)."""
        if cgroup_version(root) != "v2":
            return None, "no cgroup v2 hierarchy at " + str(root)
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        own = root / own_path_v2(proc_cgroup).lstrip("/")
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
        try:
            available = (own / "cgroup.controllers").read_text().split()
            missing = [c for c in V2_CONTROLLERS if c not in available]
            if missing:
                return None, f"{own} lacks controllers {missing} (the parent must delegate them)"
            if not os.access(own / "cgroup.procs", os.W_OK) or not os.access(
                own / "cgroup.subtree_control", os.W_OK
            ):
                return None, f"{own} is not delegated to uid {os.geteuid()} (not writable)"
            sweep_stale_v2(own, name.rsplit("-", 2)[0] + "-")
            leaf = own / SERVICE_LEAF
            leaf.mkdir(exist_ok=True)
            for pid in (own / "cgroup.procs").read_text().split():
                try:
                    (leaf / "cgroup.procs").write_text(pid)
                except ProcessLookupError:
                    pass
            (own / "cgroup.subtree_control").write_text(wanted)
            parent = own / name
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text(wanted)
        except OSError as error:
            return None, f"cannot set up a delegated cgroup v2 subtree under {own}: {error}"
        return cls(parent), f"cgroup v2 subtree {parent}"

    def weigh_as(self, num_tasks: int) -> None:
        """The sandboxes together weigh as `num_tasks` ordinary groups (cf. the v1 parent)."""
        weight = min(MAX_CPU_WEIGHT, DEFAULT_CPU_WEIGHT * max(1, num_tasks))
        (self.path / "cpu.weight").write_text(str(weight))

    def child(self, name: str) -> CgroupV2:
        path = self.path / name
        path.mkdir(exist_ok=True)
        return CgroupV2(path)

    def destroy(self) -> None:
        for child in [c for c in self.path.iterdir() if c.is_dir()]:
            CgroupV2(child).destroy()
        try:
            self.path.rmdir()
        except OSError:
            pass


def sweep_stale_v2(own: Path, prefix: str) -> None:
    """Remove `<prefix><pid>-*` groups under `own` left by a service process that died."""
    for parent in own.glob(f"{prefix}*"):
        pid = parent.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            CgroupV2Parent(parent).destroy()


def detect_cgroups(name: str, is_root: bool) -> tuple[CgroupParent | CgroupV2Parent | None, str]:
    """The slots' parent group in whichever hierarchy the host has, or None; and a line that
    says which (or why none) for the start-up log and the limits report."""
    version = cgroup_version()
    if version == "v1":
        if not is_root:
            return None, "cgroup v1 needs the service to run as root"
        parent = CgroupParent.detect(name)
        return parent, "cgroup v1" if parent else "cgroup v1 is not writable here"
    if version == "v2":
        return CgroupV2Parent.detect(name)
    return None, f"no cgroup hierarchy at {CGROUP_ROOT}"
