"""The argv of one bubblewrap sandbox: the launcher (cgroups, rlimits, uid), bwrap, program.

    launch -j <slot>/cgroup.procs ... -r core=0 -r fsize=N ... -f N=<filter> -u UID -g GID -- \
        bwrap ... --seccomp N ... PROGRAM

The launcher (agentrl.sandbox.launch, one small static exec) joins the slot's cgroups before
anything else runs, so nothing of the untrusted program ever runs outside them, then sets the
rlimits (`rlimits`), opens the compiled seccomp filter on a free fd below 10 (a fresh open per
sandbox: bwrap reads it to the end), drops to the sandbox uid and executes bwrap. Where it
could not be built, the same steps run as before, in a shell prologue and setpriv:

    sh -c 'join the cgroups; set rlimits; exec "$@" N<filter' setpriv --reuid=nobody ... \
        bwrap ... --seccomp N ... PROGRAM

bwrap unshares every namespace (user, pid, net, ipc, uts, mount, cgroup), forbids nested user
namespaces, drops all capabilities, binds /usr (and `ro_binds`) read-only, gives a private
/proc, a minimal /dev, and the slot's work/ and tmp/ at /work and /tmp; the root itself is
read-only. bwrap installs the seccomp filter (agentrl.sandbox.seccomp) just before it executes
the program, then closes its fd. Used by the one-shot runs and the warm slots of
agentrl.sandbox.bwrap and by the sessions (agentrl.sandbox.sessions).

/dev/shm is a tmpfs of `disk_mb` and the rest of /dev read-only (bwrap's /dev is otherwise an
unbounded tmpfs the program may write). A private slot (no root to mount its tmpfs;
agentrl.sandbox.private_tmpfs) gets /work, /tmp and /dev/shm from one tmpfs of `disk_mb`.

Without a cgroup (not root, cgroup v2 host) memory falls back to RLIMIT_AS per process, and
the process limit to RLIMIT_NPROC set by prlimit inside the run's own user namespace, which
the kernel (5.14+) counts per namespace: per run, not shared by all runs of the uid.

`find_tools` finds the host's tools once per backend (bwrap, setpriv, prlimit, whether bwrap
has `--size`), builds the launcher and writes the seccomp filter into the backend's dir.

What this module does NOT cover: starting or supervising the process (agentrl.sandbox.capture)
and the cgroup's limits (set by the backend).
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.launch import build as build_launcher
from agentrl.sandbox.private_tmpfs import private_mounts, supports_size
from agentrl.sandbox.seccomp import write_filter
from agentrl.sandbox.workdir import SlotDir

log = get_logger(__name__)

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
# sh's ulimit flag per rlimit, and its unit where it is not the kernel's (-f: 512-byte
# blocks, -v: KiB).
ULIMIT_FLAGS = {"core": "c", "fsize": "f", "nofile": "n", "cpu": "t", "as": "v"}
ULIMIT_UNITS = {"fsize": 512, "as": 1024}


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
    """bwrap has `--size` (>= 0.5): /dev/shm is a tmpfs of `disk_mb` in the run's own mount
    namespace (a private slot's shares one with its /work and /tmp)."""
    launcher: str | None = None
    """The built launcher (agentrl.sandbox.launch); None: sh and setpriv do its steps."""
    executor: str | None = None
    """The built slot executor (agentrl.sandbox.slot_executor); None: a sandbox per run."""


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
    """The full argv: launcher (or shell prologue and setpriv), bwrap, program.

    `pass_fds`: fds the caller passes to the process (the seccomp fd must not take one)."""
    limits = rlimits(config, timeout_s, memory_mb if cgroup is None else None)
    inside: list[str] = []
    if cgroup is None and tools.prlimit is not None:
        # Processes per run without a pids cgroup: RLIMIT_NPROC set INSIDE the run's own user
        # namespace (prlimit, after bwrap made it). Since Linux 5.14 the kernel counts a uid's
        # processes per user namespace and checks the limit at each level, the outer level
        # against the limit the namespace's creator had (left high here): so the count and
        # the cap are the run's own, not shared by every run of the uid.
        inside = [tools.prlimit, f"--nproc={config.max_processes}", "--"]
    seccomp_fd = None
    if tools.seccomp_filter is not None:
        seccomp_fd = next(n for n in range(3, 10) if n not in pass_fds)
    bwrap = bwrap_args(config, tools.bwrap, slot_dir, tools.sized_tmpfs)
    if seccomp_fd is not None:
        bwrap += ["--seccomp", str(seccomp_fd)]
    tail = [*bwrap, "--", *inside, *program]
    if tools.launcher is not None:
        argv = [tools.launcher]
        for path in cgroup.procs_files() if cgroup is not None else []:
            argv += ["-j", str(path)]
        for name, value in limits:
            argv += ["-r", f"{name}={value}"]
        if seccomp_fd is not None:
            argv += ["-f", f"{seccomp_fd}={tools.seccomp_filter}"]
        if tools.run_as is not None:
            argv += ["-u", str(tools.run_as), "-g", str(tools.run_as)]
        return [*argv, "--", *tail]
    # The same steps as the launcher, through sh and setpriv: sh's ulimit takes KiB for -v
    # and 512-byte blocks for -f.
    prologue = cgroup.join_script() if cgroup is not None else ""
    prologue += "".join(
        f"ulimit -{ULIMIT_FLAGS[name]} {value // ULIMIT_UNITS.get(name, 1)}; "
        for name, value in limits
    )
    exec_line = 'exec "$@"'
    if seccomp_fd is not None:
        exec_line += f" {seccomp_fd}<{shlex.quote(tools.seccomp_filter)}"
    argv = ["/bin/sh", "-c", prologue + exec_line, "sh"]
    if tools.run_as is not None:
        argv += [
            tools.setpriv,
            f"--reuid={tools.run_as}",
            f"--regid={tools.run_as}",
            "--clear-groups",
            "--",
        ]
    return argv + tail


def rlimits(
    config: SandboxConfig, timeout_s: float, memory_mb: int | None
) -> list[tuple[str, int]]:
    """The rlimits of one sandbox (soft and hard alike), as (name, value in the kernel's unit).

    CPU seconds are a backstop behind the wall clock (a program using several cores may burn
    more CPU than wall time). `memory_mb` (only without a memory cgroup) adds RLIMIT_AS."""
    cpu_s = math.ceil(timeout_s * max(1.0, config.cpu_cores)) + 1
    limits = [
        ("core", 0),
        ("fsize", config.disk_mb << 20),
        ("nofile", MAX_OPEN_FILES),
        ("cpu", cpu_s),
    ]
    if memory_mb is not None:
        limits.append(("as", (memory_mb + ADDRESS_SPACE_SLACK_MB) << 20))
    return limits


def bwrap_args(
    config: SandboxConfig,
    bwrap: str,
    slot_dir: SlotDir,
    sized_tmpfs: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """bwrap's flags; `extra` go in before the root is made read-only (a slot sandbox's
    executor bind and capabilities, agentrl.sandbox.slot_executor)."""
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
    if sized_tmpfs and not slot_dir.private:
        # bwrap's /dev is a tmpfs of the sandbox uid without a size: /dev/shm gets a sized
        # one of its own and the rest of /dev becomes read-only, so neither fills memory.
        args += ["--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if slot_dir.private:
        args += private_mounts(config.disk_mb << 20)  # /work, /tmp, /dev/shm: one tmpfs
    else:
        args += ["--bind", str(slot_dir.work), "/work", "--bind", str(slot_dir.tmp), "/tmp"]
    return [*args, *extra, "--chdir", "/work", "--remount-ro", "/"]


def find_tools(config: SandboxConfig, root: Path) -> Tools:
    """The host's tools for `config`: bwrap (required), setpriv and prlimit, the launcher built
    into `root` (the backend's instance dir) and the seccomp filter written there. Logs a
    warning for each protection a missing one costs."""
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None:
        raise RuntimeError("bubblewrap is not installed; `apt-get install -y bubblewrap`")
    launcher = build_launcher(root)
    # As root, the sandbox runs as an unprivileged host uid (nobody), not as mapped root.
    can_drop = launcher is not None or setpriv is not None
    run_as = config.sandbox_uid if os.geteuid() == 0 and can_drop else None
    seccomp_path: Path | None = root / "seccomp.bpf"
    if not config.seccomp:
        log.warning("sandbox.seccomp is off: sandboxes run without a syscall filter")
        seccomp_path = None
    elif not write_filter(seccomp_path):
        log.warning(
            "no seccomp filter for this architecture (%s): sandboxes run without one",
            os.uname().machine,
        )
        seccomp_path = None
    tools = Tools(
        bwrap,
        setpriv,
        run_as,
        str(seccomp_path) if seccomp_path else None,
        shutil.which("prlimit"),
        supports_size(bwrap),
        launcher,
    )
    if not tools.sized_tmpfs:
        log.warning("bwrap %s has no --size (bubblewrap >= 0.5 has): /dev/shm unbounded", bwrap)
    return tools
