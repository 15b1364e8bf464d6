"""A run's /work, /tmp and /dev/shm as one size-limited tmpfs inside its own mount namespace.

Without root the service cannot mount a tmpfs per slot (agentrl.sandbox.workdir), so a run's
files would land on the host disk, bounded only per file by RLIMIT_FSIZE. bubblewrap can
mount one itself, inside the user and mount namespaces it makes for the run (`--size BYTES
--tmpfs`, bwrap >= 0.5): `private_mounts` makes a single tmpfs of `disk_mb` at `DISK_ROOT`
and bind-mounts three directories of it at /work, /tmp and /dev/shm, so the kernel stops the
run's files *together* at `disk_mb` (ENOSPC in all three), and everything the run wrote is
gone when its last process exits. The tmpfs is memory: agentrl.sandbox.run_watch counts what
it holds in the run's memory, as a memory cgroup would charge it.

    bwrap ... --size N --tmpfs /.agentrl-disk  --dir /.agentrl-disk/work
              --bind-try ../../newroot/.agentrl-disk/work /work  (tmp, shm alike)
              --remount-ro /.agentrl-disk

A bind's source is a host path to bwrap (0.5 to 0.11 alike): it first resolves it with
realpath() on the host, relative to its cwd (`--bind-try` keeps a source that does not exist
there as given), then mounts it from under `/oldroot`, where it moved the host's root, beside
the sandbox's root at `/newroot` in its set-up tmpfs. A relative source with one `..` per level
of the service's cwd is `/newroot/...` on the host (absent: only root could make it, and
`private_mounts` refuses to run if it exists) and `/oldroot/../../newroot/...`, a directory of
the sandbox's own tmpfs, at set-up. Were a bind skipped, /work would be missing and bwrap's
`--chdir /work` would fail the run; tests/unit/sandbox/test_run_watch.py and
tests/integration/test_sandbox_nonroot.py check the layout. `DISK_ROOT` itself stays visible to
the run, read-only (the same files as its three mounts).

The host reaches such a tmpfs through the run's own processes: the service owns the run's user
namespace (it made it), so it may open `/proc/<pid>/root/work` of a process inside it. A
one-shot run therefore starts behind a hold: a shell that prints `HOLD_LINE` once bwrap has
set everything up and waits for one line on stdin before it executes the program. The
service then opens the run's /work as a directory fd, writes the request's files through it
(agentrl.sandbox.no_follow), and sends `RELEASE` ahead of the program's stdin. The fd pins the
tmpfs: after the run has exited the service reads the fetched files through it, then closes
it, which frees the memory. A session opens the fd once its kernel is ready and keeps it.

    bwrap ... (private_mounts) -- sh -c 'echo HOLD; read; exec "$@"' program
    service: read HOLD -> open /proc/<child>/root/work -> write files -> RELEASE + stdin

What this module does NOT cover: the tmpfs is memory, not disk; without a memory cgroup and
without the sampled watch (Linux < 5.10) it is charged to no run (the pod's cgroup, if any,
holds it) and only `disk_mb` bounds it.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

from agentrl.sandbox.no_follow import DIR_FLAGS
from agentrl.sandbox.run_watch import parent_pid

HOLD_LINE = b"agentrl-sandbox-ready\n"
RELEASE = b"\n"
# The hold runs before any untrusted code, so nothing else can be on stdout before its line.
HOLD_SCRIPT = f'echo {HOLD_LINE.decode().strip()}; read -r _ || exit 125; exec "$@"'
# bwrap's set-up takes milliseconds; this allows for a loaded host.
HOLD_TIMEOUT_S = 30.0
# Where the run's one tmpfs is mounted; a hidden name at the root (read-only there), since
# /work, /tmp and /dev/shm each show one of its directories.
DISK_ROOT = "/.agentrl-disk"
# Where bwrap keeps the sandbox's root during set-up (and so a bind source's host-side path).
NEWROOT = "/newroot"
# The tmpfs's directory behind each writable place of the run.
DISK_DIRS = {"work": "/work", "tmp": "/tmp", "shm": "/dev/shm"}


def supports_size(bwrap: str) -> bool:
    """Whether this bwrap has `--size` for `--tmpfs` (bubblewrap 0.5 and later)."""
    try:
        result = subprocess.run(
            [bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in result.stdout + result.stderr


def private_mounts(disk_bytes: int) -> list[str]:
    """bwrap arguments (after `--dev /dev`): /work, /tmp and /dev/shm from one tmpfs of
    `disk_bytes`, the tmpfs's own root and the rest of /dev read-only."""
    if os.path.lexists(NEWROOT):
        raise RuntimeError(
            f"{NEWROOT} exists on this host: bwrap would bind it as a run's /work; remove it"
        )
    up = "../" * len(Path.cwd().parts)  # from the cwd up to /, on the host and at set-up
    args = ["--size", str(disk_bytes), "--tmpfs", DISK_ROOT]
    for name, dest in DISK_DIRS.items():
        inside = f"{DISK_ROOT}/{name}"
        args += ["--dir", inside, "--bind-try", f"{up}{NEWROOT[1:]}{inside}", dest]
    return [*args, "--remount-ro", DISK_ROOT, "--remount-ro", "/dev"]


def hold_argv(program: list[str]) -> list[str]:
    """`program` behind the hold (run inside the sandbox, after bwrap's set-up)."""
    return ["/bin/sh", "-c", HOLD_SCRIPT, "sh", *program]


def await_hold(proc: subprocess.Popen, timeout_s: float = HOLD_TIMEOUT_S) -> None:
    """Wait for the hold's line on `proc`'s stdout; RuntimeError (with bwrap's stderr) if the
    sandbox exits or stays silent instead."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        chunk = os.read(fd, len(HOLD_LINE) - len(line)) if readable else b""
        if not chunk:
            why = "exited" if readable else f"was not ready within {timeout_s:g} s"
            stderr = proc.stderr.read() if readable else b""
            raise RuntimeError(
                f"the sandbox {why} before its work dir was ready: "
                f"{stderr.decode('utf-8', 'replace')[-500:]}"
            )
        line += chunk
    if line != HOLD_LINE:
        raise RuntimeError(f"the sandbox's hold printed {line[:60]!r}, not its ready line")


def sandbox_pid(outer_pid: int) -> int:
    """A process inside the run's namespaces: bwrap's child (pid 1 inside), found from the
    bwrap process the service started (which stays outside them)."""
    children_file = f"/proc/{outer_pid}/task/{outer_pid}/children"
    if os.path.exists(children_file):
        with open(children_file, "rb") as handle:
            children = [int(pid) for pid in handle.read().split()]
    else:  # a kernel without CONFIG_PROC_CHILDREN: scan /proc for the child
        children = [pid for pid in _all_pids() if parent_pid(pid) == outer_pid]
    if len(children) != 1:
        raise RuntimeError(f"bwrap (pid {outer_pid}) has {len(children)} children, not 1")
    child = children[0]
    if os.readlink(f"/proc/{child}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        raise RuntimeError(f"pid {child} is not in a mount namespace of its own")
    return child


def open_work(pid: int) -> int:
    """An fd of the /work directory that process `pid` sees (its root's `work`, not followed
    if it were a link: bwrap made it a mount point on a read-only root)."""
    root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open("work", DIR_FLAGS, dir_fd=root)
    finally:
        os.close(root)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
