"""The argv of one bubblewrap sandbox: shell prologue (cgroups, rlimits), setpriv, bwrap.

    sh -c 'join the cgroups; set rlimits; exec "$@" N<filter' setpriv --reuid=nobody ... \
        bwrap ... --seccomp N ... PROGRAM

bwrap unshares every namespace (user, pid, net, ipc, uts, mount, cgroup), forbids nested user
namespaces, drops all capabilities, binds /usr (and `ro_binds`) read-only, gives a private
/proc, a minimal /dev, and the slot's work/ and tmp/ at /work and /tmp; the root itself is
read-only. With a seccomp filter (agentrl.sandbox.seccomp), the shell opens the compiled
filter on a free fd below 10 (a fresh open per sandbox: bwrap reads it to the end) and bwrap
installs it just before it executes the program, then closes the fd. The shell joins the slot's cgroups before anything else runs, so nothing of the
untrusted program ever runs outside them. Used by the one-shot runs and the warm slots of
agentrl.sandbox.bwrap and by the sessions (agentrl.sandbox.sessions).

/dev/shm is a tmpfs of `disk_mb` and the rest of /dev read-only (bwrap's /dev is otherwise an
unbounded tmpfs the program may write). A private slot (no root to mount its tmpfs;
agentrl.sandbox.private_tmpfs) gets tmpfs mounts of `disk_mb` at /work and /tmp from bwrap.

Without a cgroup (not root, cgroup v2 host) memory falls back to RLIMIT_AS per process, and
the process limit to RLIMIT_NPROC set by prlimit inside the run's own user namespace, which
the kernel (5.14+) counts per namespace: per run, not shared by all runs of the uid.

What this module does NOT cover: starting or supervising the process (agentrl.sandbox.capture)
and the limits' values (the cgroup's, set by the backend).
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.workdir import SlotDir

# The sandbox's environment: nothing of the service's leaks in.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
# Open files per process: plenty for Python and its subprocesses, far from the host's limit.
MAX_OPEN_FILES = 1024
# Without a memory cgroup, RLIMIT_AS stands in; address space exceeds resident memory
# (interpreter mappings, thread stacks), so allow this much on top of the request.
ADDRESS_SPACE_SLACK_MB = 256
# Host directories that hold the interpreter and its libraries on Debian-like systems.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Debian's alternatives: libraries under /usr link through it (numpy's libblas.so.3, g++'s
# tools on some hosts), so it is bound read-only too; it holds only symlinks.
ALTERNATIVES_DIR = "/etc/alternatives"


@dataclass(frozen=True)
class Tools:
    """Host paths of the tools and the host uid the sandbox runs as (None: the service's)."""

    bwrap: str
    setpriv: str | None
    run_as: int | None
    seccomp_filter: str | None = None
    """Host path of the compiled seccomp filter (None: no filter)."""
    prlimit: str | None = None
    """util-linux prlimit (sets the per-run process limit inside the run's user namespace)."""
    sized_tmpfs: bool = False
    """bwrap has `--size` (>= 0.5): /dev/shm and a private slot's /work and /tmp are tmpfs
    mounts of `disk_mb` in the run's own mount namespace."""


def sandbox_argv(
    config: SandboxConfig,
    tools: Tools,
    slot_dir: SlotDir,
    cgroup: Cgroup | None,
    timeout_s: float,
    memory_mb: int,
    program: list[str],
    pass_fds: tuple[int, ...] = (),
) -> list[str]:
    """The full argv: shell prologue (cgroups, rlimits), setpriv, bwrap, program.

    `pass_fds`: fds the caller passes to the process (the seccomp fd must not take one)."""
    prologue = cgroup.join_script() if cgroup is not None else ""
    # sh's ulimit -f counts 512-byte blocks; -t is CPU seconds, a backstop behind the wall
    # clock (a program using several cores may burn more CPU than wall time).
    cpu_s = math.ceil(timeout_s * max(1.0, config.cpu_cores)) + 1
    prologue += (
        f"ulimit -c 0; ulimit -f {config.disk_mb * 2048}; "
        f"ulimit -n {MAX_OPEN_FILES}; ulimit -t {cpu_s}; "
    )
    inside: list[str] = []
    if cgroup is None:
        address_kb = (memory_mb + ADDRESS_SPACE_SLACK_MB) * 1024
        prologue += f"ulimit -v {address_kb}; "
        # Processes per run without a pids cgroup: RLIMIT_NPROC set INSIDE the run's own user
        # namespace (prlimit, after bwrap made it). Since Linux 5.14 the kernel counts a uid's
        # processes per user namespace and checks the limit at each level, the outer level
        # against the limit the namespace's creator had (left high here): so the count and
        # the cap are the run's own, not shared by every run of the uid.
        if tools.prlimit is not None:
            inside = [tools.prlimit, f"--nproc={config.max_processes}", "--"]
    seccomp: list[str] = []
    exec_line = 'exec "$@"'
    if tools.seccomp_filter is not None:
        fd = next(n for n in range(3, 10) if n not in pass_fds)
        exec_line += f" {fd}<{shlex.quote(tools.seccomp_filter)}"
        seccomp = ["--seccomp", str(fd)]
    argv = ["/bin/sh", "-c", prologue + exec_line, "sh"]
    if tools.run_as is not None:
        argv += [
            tools.setpriv,
            f"--reuid={tools.run_as}",
            f"--regid={tools.run_as}",
            "--clear-groups",
            "--",
        ]
    tail = ["--", *inside, *program]
    return argv + bwrap_args(config, tools.bwrap, slot_dir, tools.sized_tmpfs) + seccomp + tail


def bwrap_args(
    config: SandboxConfig, bwrap: str, slot_dir: SlotDir, sized_tmpfs: bool = False
) -> list[str]:
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    if os.path.isdir(ALTERNATIVES_DIR):
        args += ["--ro-bind", ALTERNATIVES_DIR, ALTERNATIVES_DIR]
    for path in config.ro_binds:
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    size = str(config.disk_mb << 20)
    if sized_tmpfs:
        # bwrap's /dev is a tmpfs of the sandbox uid without a size: /dev/shm gets a sized
        # one of its own and the rest of /dev becomes read-only, so neither fills memory.
        args += ["--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if slot_dir.private:
        args += ["--size", size, "--tmpfs", "/work", "--size", size, "--tmpfs", "/tmp"]
    else:
        args += ["--bind", str(slot_dir.work), "/work", "--bind", str(slot_dir.tmp), "/tmp"]
    return [*args, "--chdir", "/work", "--remount-ro", "/"]
