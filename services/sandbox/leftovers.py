"""Processes a session's call leaves running: found from the host, SIGKILLed when it returns.

A session's interpreter is a chain the service started: bwrap (outside the pid namespace) →
bwrap's init (pid 1 inside) → the kernel (agentrl.sandbox.session_kernel). Everything a call
starts descends from that chain (an orphan, double-forked or setsid, is adopted by bwrap's
init) and, when the service has cgroups, lives in the session's cgroup, which no process can
leave. The chain's pids are recorded once, when the kernel reports ready and before any
untrusted code has run; after each call every other live process of the session is SIGKILLed:
a `sleep 600 &`, a subprocess the cell kept a handle on, a daemon.

    kernel ready → `session_pids` (the chain, kept) → call → `end_leftovers` (all others)

What this module does NOT cover: threads of the interpreter itself are the kernel's own
process and keep running between calls (within the session's CPU quota and memory limit,
until the session is closed or idles out); killed children of the kernel stay zombies until
the cell's code waits for them (each holds a `pids.max` slot, not memory or CPU). A pid
that exits and is reused between listing and SIGKILL is the same narrow race as
`Cgroup.kill_all`'s.
"""

from __future__ import annotations

import os
import signal
import time

from agentrl.sandbox.cgroups import Cgroup

# Rounds of SIGKILL against leftovers that keep forking; pids.max bounds each round's number.
KILL_ROUNDS = 200
KILL_ROUND_SLEEP_S = 0.005


def session_pids(root_pid: int, cgroup: Cgroup | None) -> set[int]:
    """Live (not zombie) processes of the session rooted at `root_pid`: its cgroup's members,
    or without a cgroup, `root_pid` and its descendants."""
    pids = set(cgroup.pids()) if cgroup is not None else _descendants(root_pid)
    return {pid for pid in pids if _state_and_parent(pid)[0] not in ("Z", "X", "")}


def _descendants(root_pid: int) -> set[int]:
    """`root_pid` and its descendants, through /proc/<pid>/task/<tid>/children (a walk of the
    session's few processes; scanning all of /proc costs ~100 us per host process); a kernel
    without that file gets the full scan."""
    if not os.path.exists(f"/proc/{root_pid}/task/{root_pid}/children"):
        return _descendants_by_scan(root_pid)
    found, stack = set(), [root_pid]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                    stack.extend(int(child) for child in handle.read().split())
            except OSError:
                pass
    return found


def _descendants_by_scan(root_pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(_state_and_parent(int(entry))[1], []).append(int(entry))
    found, stack = set(), [root_pid]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def end_leftovers(root_pid: int, cgroup: Cgroup | None, keep: frozenset[int]) -> int | None:
    """SIGKILL every live process of the session outside `keep` until none is left; how many
    were ended, or None if some were still there after KILL_ROUNDS rounds."""
    ended: set[int] = set()
    for _ in range(KILL_ROUNDS):
        extra = session_pids(root_pid, cgroup) - keep
        if not extra:
            return len(ended)
        for pid in extra:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ended |= extra
        time.sleep(KILL_ROUND_SLEEP_S)
    return None


def _state_and_parent(pid: int) -> tuple[str, int]:
    """The state letter and parent pid of `pid` ("", 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except OSError:
        return "", 0
    # The command name is in parentheses and may itself hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])
