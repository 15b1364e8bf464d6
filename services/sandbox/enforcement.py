"""Which limits a sandbox replica really enforces, and how: said at start-up and in /readyz.

A limit that a configuration cannot enforce is never dropped silently: each backend lists every
limit of `SandboxConfig` with how it holds it (`Limit.how`) or why it does not
(`enforced=False`). `report` logs the list once at start-up (a WARNING line per limit not
enforced, with the setting or node permission that would enforce it); the HTTP `/readyz` body
carries it under `limits` so an operator or a test reads it from a running replica.

What this module does NOT cover: measuring a limit (the hostile tests do that); limits of
things outside the sandbox (the service's own memory, the host's disk for logs).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap_argv import ADDRESS_SPACE_SLACK_MB
from agentrl.sandbox.run_watch import CPU_BURST_S, SAMPLE_INTERVAL_S

log = get_logger(__name__)


@dataclass(frozen=True)
class Limit:
    name: str
    enforced: bool
    how: str
    """How it holds (enforced) or what is missing and what would enforce it (not enforced)."""

    def as_dict(self) -> dict[str, object]:
        return {"enforced": self.enforced, "how": self.how}


def bwrap_limits(
    config: SandboxConfig,
    cgroups: str | None,
    seccomp: bool,
    prlimit: bool,
    disk: str,
    shm: bool = True,
    run_watch: bool = False,
    cgroup_note: str = "",
    slot_sandbox: bool = False,
) -> list[Limit]:
    """The bwrap backend's limits given what it found at start-up. `disk`: "slot" (a tmpfs
    per slot mounted by the service), "private" (one tmpfs for /work, /tmp and /dev/shm in
    each run's own mount namespace, by bwrap) or "none"; `shm`: /dev/shm is a sized tmpfs and
    /dev read-only; `run_watch`: without cgroups, a run's processes and tmpfs files are sampled
    together; `cgroups`: the hierarchy used ("cgroup v1", "cgroup v2") or None, and
    `cgroup_note` why none; `slot_sandbox`: runs start in fresh pid, IPC and mount namespaces
    inside their slot's long-lived sandbox (agentrl.sandbox.slot_executor)."""
    hierarchy = cgroups or ""
    missing_cgroup = (
        f"no usable cgroup ({cgroup_note or 'not detected'}): run as root on a cgroup v1 host "
        "or delegate the pod's cgroup v2 subtree to the service (docs/sandbox.md)"
    )
    address_mb = config.default_memory_mb + ADDRESS_SPACE_SLACK_MB
    hard_bound = (
        f"RLIMIT_AS per process (memory_mb + {ADDRESS_SPACE_SLACK_MB} MB of address space) x "
        f"at most max_processes processes ({config.max_processes} x {address_mb} MB at the "
        "default memory_mb)"
    )
    if run_watch:
        memory_how = (
            f"all processes of a run together, sampled every {SAMPLE_INTERVAL_S * 1000:g} ms "
            "(proportional anonymous + shared memory, plus the run's files in its tmpfs at "
            "/work, /tmp and /dev/shm); a run past memory_mb is killed and reported oom; not a "
            f"kernel limit: between samples the hard bound is {hard_bound}"
        )
    else:
        memory_how = (
            f"no total per run, only {hard_bound}; needs a cgroup, or Linux >= 5.10 for the "
            "sampled watch"
        )
    shm_how = f"; /dev/shm a tmpfs of disk_mb={config.disk_mb}, the rest of /dev read-only"
    if disk == "private":
        shm_how = "; the rest of /dev read-only"
    # Where a tmpfs's pages are charged: memory, not disk.
    charged = (
        "its pages charged to the run's memory cgroup"
        if cgroups
        else "counted in the run's sampled memory"
        if run_watch
        else "in memory charged to no run (the pod's memory limit must allow for it)"
    )
    disk_how = {
        "slot": f"a tmpfs of disk_mb={config.disk_mb} per slot (work dir and /tmp together), "
        f"{charged}",
        "private": f"one tmpfs of disk_mb={config.disk_mb} for /work, /tmp and /dev/shm "
        "together, inside each run's own mount namespace (bwrap --size; nothing reaches the "
        f"host's disk), {charged}",
        "none": "only RLIMIT_FSIZE per file: many files can fill the host disk under work_root; "
        "needs root (a tmpfs per slot) or bubblewrap >= 0.5 (--size)",
    }[disk]
    return [
        Limit("wall_clock", True, "timeout_s: the whole process tree is SIGKILLed"),
        Limit("output", True, f"max_output_bytes={config.max_output_bytes} per stream"),
        Limit(
            "memory",
            bool(cgroups) or run_watch,
            f"{hierarchy} memory controller: all processes of a run together, OOM reported"
            if cgroups
            else memory_how,
        ),
        Limit(
            "processes",
            bool(cgroups) or prlimit,
            f"{hierarchy} pids.max={config.max_processes} per run"
            + (" (plus the slot's executor and the run's init)" if slot_sandbox else "")
            if cgroups
            else f"RLIMIT_NPROC={config.max_processes} inside each run's own user namespace "
            "(counted per namespace by Linux >= 5.14)"
            if prlimit
            else "not per run: util-linux prlimit is missing (apt-get install util-linux)",
        ),
        Limit(
            "cpu",
            bool(cgroups) or run_watch,
            f"{hierarchy} CFS quota of cpu_cores={config.cpu_cores:g} per run"
            if cgroups
            else f"cpu_cores={config.cpu_cores:g} per run, sampled every "
            f"{SAMPLE_INTERVAL_S * 1000:g} ms: a run ahead of its quota by "
            f"{CPU_BURST_S:g} s x cpu_cores is SIGSTOPped until it is back within it (a user-space "
            "quota at the sample's granularity, not the scheduler's)"
            if run_watch
            else "no per-run CPU share: RLIMIT_CPU caps CPU seconds (timeout_s x cpu_cores), "
            f"not the rate, and the scheduler shares the CPUs per process; {missing_cgroup}",
        ),
        Limit("disk", disk != "none", disk_how + (shm_how if shm else "; /dev/shm unbounded")),
        Limit(
            "syscalls",
            seccomp,
            "seccomp filter (Docker's default deny list) in every sandbox"
            if seccomp
            else "no seccomp filter: sandbox.seccomp is off or the architecture has no table",
        ),
        Limit(
            "network",
            True,
            "an empty network namespace per slot, its runs one after another (a run's sockets "
            "die with its processes)"
            if slot_sandbox
            else "an empty network namespace per run",
        ),
    ]


def docker_limits(config: SandboxConfig) -> list[Limit]:
    """The docker backend's limits (it refuses to start without root and cgroup v1)."""
    return [
        Limit("wall_clock", True, "timeout_s: the run's processes are SIGKILLed"),
        Limit("output", True, f"max_output_bytes={config.max_output_bytes} per stream"),
        Limit("memory", True, "the container's memory cgroup, set per run; OOM reported"),
        Limit("processes", True, "the container's pids limit"),
        Limit("cpu", True, f"the container's CPU quota (cpu_cores={config.cpu_cores:g})"),
        Limit("disk", True, f"a host tmpfs of disk_mb={config.disk_mb} at /work and /tmp"),
        Limit("syscalls", True, "Docker's default seccomp profile"),
        Limit("network", True, "--network none"),
    ]


def report(backend: str, limits: list[Limit]) -> dict[str, dict[str, object]]:
    """Log the limits once (a WARNING per limit not enforced); the dict /readyz serves."""
    for limit in limits:
        if not limit.enforced:
            log.warning("sandbox (%s): %s limit NOT enforced: %s", backend, limit.name, limit.how)
    enforced = ", ".join(limit.name for limit in limits if limit.enforced)
    log.info("sandbox (%s) enforces: %s", backend, enforced)
    return {limit.name: limit.as_dict() for limit in limits}
