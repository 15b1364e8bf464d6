"""Drive one sandboxed process: feed stdin, collect capped stdout/stderr, enforce the deadline.

`spawn` starts `argv` in its own session with three pipes; `drive` pumps stdin/stdout/stderr
through non-blocking pipes with one `selectors` loop (no thread per stream) and calls
`kill_tree()` the moment the deadline passes or a stream passes its cap. The two are separate
because the bwrap backend spawns warm processes before a request exists. The backend supplies
`kill_tree` (cgroup-wide SIGKILL for bwrap, container kill for docker), because killing the
direct child alone leaves grandchildren that called setsid(). `proc` may also be a process that
is not this one's child (a docker container's executor started it,
agentrl.sandbox.docker_channel): anything with a Popen's three streams and a `wait()` that
returns its exit status; only `kill_tree` kills it, and its CPU time is not reported here.

With `control_fd` (the read end of a pipe whose write end the program's runner holds), a line
`<exit status>\n` on it ends the run at once: what stdout and stderr already hold is read
(the runner flushed both before writing the line), and `drive` returns without waiting for
the process to exit; `Captured.exited` is then False and the caller must kill and reap the
process tree (the bwrap backend does so in the background before the slot is used again).
Without the line (the program called os._exit, was killed, closed the fd) the run ends, as
always, at EOF on stdout and stderr and the exit status is the process's own.

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
from dataclasses import dataclass, field

# Pipe reads of 64 KiB match the Linux pipe buffer: one syscall drains a full pipe.
READ_CHUNK_BYTES = 64 * 1024
# After a kill, pipes close as soon as the kernel reaps the tree; this bounds the wait for EOF
# if something unexpected keeps a pipe open (we then stop reading and report what we have).
DRAIN_AFTER_KILL_S = 2.0
# The control line is an exit status (0-255) and a newline; anything longer is not the runner's.
MAX_EXIT_STATUS = 255
MAX_CONTROL_LINE_BYTES = 16


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
    """User + system CPU of the process and the descendants it waited for (rusage); 0 when
    the run ended on the control line (not exited yet)."""
    max_rss_kb: int
    exited: bool = True
    """False when the run ended on the control line: the process may still be exiting."""


def spawn(
    argv: Sequence[str], env: dict[str, str], pass_fds: Sequence[int] = ()
) -> subprocess.Popen:
    """Start `argv` in a new session (its own process group) with piped stdin/stdout/stderr."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
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
    control_fd: int | None = None,
) -> Captured:
    """Run `proc` to completion (or its control line), the deadline or the output cap,
    whichever comes first."""
    start = time.monotonic()

    def kill() -> None:
        if kill_tree is not None:
            kill_tree()
        if isinstance(proc, subprocess.Popen):
            kill_group(proc)

    out = {proc.stdout.fileno(): _Stream(), proc.stderr.fileno(): _Stream()}
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
    control = _Control(control_fd)
    if control_fd is not None:
        os.set_blocking(control_fd, False)
        selector.register(control_fd, selectors.EVENT_READ)
    deadline = start + timeout_s
    drain_deadline: float | None = None
    finished = False  # ended on the runner's control line
    try:
        while selector.get_map() and not finished:
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
                if fd == control_fd:
                    state = control.read()
                    if state == _Control.DONE and drain_deadline is None:
                        # The runner flushed stdout and stderr before its line: take what
                        # they hold and finish without waiting for the sandbox to exit.
                        for stream_fd in [f for f in out if f in selector.get_map()]:
                            exceeded |= _drain(out, stream_fd, max_output_bytes)
                        finished = True
                        break
                    if state != _Control.WAIT:  # EOF, garbage, or a run already being killed
                        selector.unregister(fd)
                    continue
                chunk = _read_chunk(fd)
                if chunk is None:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    continue
                if (
                    _keep(out, fd, chunk, max_output_bytes)
                    and not exceeded
                    and drain_deadline is None
                ):
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
    stdout, stderr = out.values()
    if finished:  # the program is done; its sandbox may still be exiting
        returncode, cpu_time_s, max_rss_kb, exited = control.status, 0.0, 0, False
    elif not isinstance(proc, subprocess.Popen):  # not our child: its starter reports
        returncode, cpu_time_s, max_rss_kb, exited = proc.wait(), 0.0, 0, True
    else:
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = returncode = os.waitstatus_to_exitcode(status)
        cpu_time_s, max_rss_kb = rusage.ru_utime + rusage.ru_stime, rusage.ru_maxrss
        exited = True
    return Captured(
        returncode=returncode,
        stdout=b"".join(stdout.chunks),
        stderr=b"".join(stderr.chunks),
        stdout_truncated=stdout.truncated,
        stderr_truncated=stderr.truncated,
        timed_out=timed_out,
        output_exceeded=exceeded,
        wall_time_s=time.monotonic() - start,
        cpu_time_s=cpu_time_s,
        max_rss_kb=max_rss_kb,
        exited=exited,
    )


@dataclass
class _Stream:
    """One output stream as read so far: the chunks kept, their size, and whether the cap
    cut it. The chunks are joined once, at the end: appending them to one growing buffer and
    copying that out made a second copy of the whole output (10 MB: 1.2 -> 0.5 ms of CPU in a
    loop, 1.4-3.8 ms less service CPU a request through the sandbox server)."""

    chunks: list[bytes] = field(default_factory=list)
    num_bytes: int = 0
    truncated: bool = False


class _Control:
    """The runner's status line on the control fd, read as it comes."""

    WAIT, DONE, IGNORE = "wait", "done", "ignore"

    def __init__(self, fd: int | None) -> None:
        self.fd, self.data, self.status = fd, b"", 0

    def read(self) -> str:
        """DONE once a whole, valid line arrived (`status` holds it), WAIT for more, IGNORE
        at EOF or for a malformed line (the run then ends at EOF of stdout and stderr)."""
        chunk = _read_chunk(self.fd)
        if chunk is None:
            return self.WAIT
        if not chunk:
            return self.IGNORE
        self.data += chunk
        line, newline, _ = self.data.partition(b"\n")
        if not newline:
            return self.WAIT if len(self.data) < MAX_CONTROL_LINE_BYTES else self.IGNORE
        if not (line.isdigit() and int(line) <= MAX_EXIT_STATUS):
            return self.IGNORE
        self.status = int(line)
        return self.DONE


def _drain(out: dict[int, _Stream], fd: int, max_output_bytes: int) -> bool:
    """Read a non-blocking fd until it is empty (or at EOF); True when it went past the cap."""
    while chunk := _read_chunk(fd):
        if _keep(out, fd, chunk, max_output_bytes):
            return True
    return False


def _read_chunk(fd: int) -> bytes | None:
    """Up to one chunk from a non-blocking fd; b"" at EOF, None when nothing is there now."""
    try:
        return os.read(fd, READ_CHUNK_BYTES)
    except BlockingIOError:
        return None


def _keep(out: dict[int, _Stream], fd: int, chunk: bytes, max_output_bytes: int) -> bool:
    """Keep `chunk` in fd's stream up to the cap; True when it went past the cap."""
    stream = out[fd]
    room = max_output_bytes - stream.num_bytes
    if len(chunk) > room:
        chunk = chunk[:room]
        stream.truncated = True
    if chunk:
        stream.chunks.append(chunk)
        stream.num_bytes += len(chunk)
    return stream.truncated


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
