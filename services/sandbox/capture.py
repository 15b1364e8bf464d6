"""Drive one sandboxed process: feed stdin, collect capped stdout/stderr, enforce the deadline.

`spawn` starts `argv` in its own session with three pipes; `drive` pumps stdin/stdout/stderr
through non-blocking pipes with one `selectors` loop (no thread per stream) and calls
`kill_tree()` the moment the deadline passes or a stream passes its cap. The two are separate
because the bwrap backend spawns warm processes before a request exists. The backend supplies
`kill_tree` (cgroup-wide SIGKILL for bwrap, container kill for docker), because killing the
direct child alone leaves grandchildren that called setsid().

What this module does NOT cover: isolation (it runs whatever argv says, with the caller's
rights); the caller must pass an argv that enters the sandbox.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Pipe reads of 64 KiB match the Linux pipe buffer: one syscall drains a full pipe.
READ_CHUNK_BYTES = 64 * 1024
# After a kill, pipes close as soon as the kernel reaps the tree; this bounds the wait for EOF
# if something unexpected keeps a pipe open (we then stop reading and report what we have).
DRAIN_AFTER_KILL_S = 2.0


@dataclass
class Captured:
    """What one process did, as seen from outside it."""

    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    output_exceeded: bool
    wall_time_s: float
    cpu_time_s: float
    """User + system CPU of the process and the descendants it waited for (rusage)."""
    max_rss_kb: int


def spawn(argv: Sequence[str], env: dict[str, str], pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start `argv` in a new session (its own process group) with piped stdin/stdout/stderr."""
    return subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True, close_fds=True, pass_fds=tuple(pass_fds),
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def drive(
    proc: subprocess.Popen,
    *,
    stdin: bytes,
    timeout_s: float,
    max_output_bytes: int,
    kill_tree: Callable[[], None] | None = None,
) -> Captured:
    """Run `proc` to completion, the deadline or the output cap, whichever comes first."""
    start = time.monotonic()

    def kill() -> None:
        if kill_tree is not None:
            kill_tree()
        kill_group(proc)

    out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    truncated = dict.fromkeys(out, False)
    timed_out = exceeded = False
    selector = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream.fileno(), selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    pending = memoryview(stdin)
    if pending:
        os.set_blocking(stdin_fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    deadline = start + timeout_s
    drain_deadline: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if drain_deadline is None and now >= deadline:
                timed_out = True
                kill()
                drain_deadline = now + DRAIN_AFTER_KILL_S
            limit = drain_deadline if drain_deadline is not None else deadline
            if drain_deadline is not None and now >= limit:
                break
            for key, _ in selector.select(max(0.0, limit - now)):
                fd = key.fd
                if fd == stdin_fd:
                    pending = _write_some(proc, stdin_fd, selector, pending)
                    continue
                try:
                    chunk = os.read(fd, READ_CHUNK_BYTES)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffer = out[fd]
                room = max_output_bytes - len(buffer)
                if len(chunk) <= room:
                    buffer += chunk
                    continue
                buffer += chunk[:room]
                truncated[fd] = True
                if not exceeded and drain_deadline is None:
                    exceeded = True
                    kill()
                    drain_deadline = time.monotonic() + DRAIN_AFTER_KILL_S
    finally:
        selector.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()
    if drain_deadline is not None:
        kill()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall_time_s = time.monotonic() - start
    stdout_fd, stderr_fd = list(out)
    return Captured(
        returncode=proc.returncode, stdout=bytes(out[stdout_fd]), stderr=bytes(out[stderr_fd]),
        stdout_truncated=truncated[stdout_fd], stderr_truncated=truncated[stderr_fd],
        timed_out=timed_out, output_exceeded=exceeded, wall_time_s=wall_time_s,
        cpu_time_s=rusage.ru_utime + rusage.ru_stime, max_rss_kb=rusage.ru_maxrss,
    )


def _write_some(
    proc: subprocess.Popen, fd: int, selector: selectors.BaseSelector, pending: memoryview
) -> memoryview:
    """Write what the stdin pipe takes now; close it when done or when the reader is gone."""
    try:
        written = os.write(fd, pending[:READ_CHUNK_BYTES])
        pending = pending[written:]
    except BlockingIOError:
        return pending
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.EINVAL):
            raise
        pending = pending[:0]
    if not pending:
        selector.unregister(fd)
        proc.stdin.close()
    return pending
