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
    config: SandboxConfig, cgroups: bool, seccomp: bool, prlimit: bool, tmpfs: bool
) -> list[Limit]:
    """The bwrap backend's limits given what it found at start-up."""
    v1 = "cgroup v1"
    missing_cgroup = (
        "no usable cgroup v1 (service not root, or a cgroup v2 host): run as root on a v1 host"
    )
    return [
        Limit("wall_clock", True, "timeout_s: the whole process tree is SIGKILLed"),
        Limit("output", True, f"max_output_bytes={config.max_output_bytes} per stream"),
        Limit(
            "memory",
            cgroups,
            f"{v1} memory controller: all processes of a run together, OOM reported"
            if cgroups
            else f"only RLIMIT_AS per process: a run of N processes may use N x the limit; "
            f"{missing_cgroup}",
        ),
        Limit(
            "processes",
            cgroups or prlimit,
            f"{v1} pids.max={config.max_processes} per run"
            if cgroups
            else f"RLIMIT_NPROC={config.max_processes} inside each run's own user namespace "
            "(counted per namespace by Linux >= 5.14)"
            if prlimit
            else "not per run: util-linux prlimit is missing (apt-get install util-linux)",
        ),
        Limit(
            "cpu",
            cgroups,
            f"{v1} CFS quota of cpu_cores={config.cpu_cores:g} per run"
            if cgroups
            else f"no per-run CPU share, only RLIMIT_CPU seconds; {missing_cgroup}",
        ),
        Limit(
            "disk",
            tmpfs,
            f"a tmpfs of disk_mb={config.disk_mb} per slot (work dir and /tmp together)"
            if tmpfs
            else "only RLIMIT_FSIZE per file: many files can fill the host disk under "
            "work_root; mounting the per-slot tmpfs needs root (CAP_SYS_ADMIN)",
        ),
        Limit(
            "syscalls",
            seccomp,
            "seccomp filter (Docker's default deny list) in every sandbox"
            if seccomp
            else "no seccomp filter: sandbox.seccomp is off or the architecture has no table",
        ),
        Limit("network", True, "an empty network namespace per run"),
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
