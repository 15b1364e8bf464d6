"""Sessions: notebook-style interpreter state kept across the calls of one trajectory (bwrap).

A session owns a bwrap slot of its own (cgroup + tmpfs work dir, agentrl.sandbox.bwrap) and one
long-lived sandboxed interpreter running agentrl.sandbox.session_kernel. Calls with the same
`session_id` run one at a time in that interpreter, so variables, imports and files persist.
The memory limit is the first call's (or the default); a timeout or output overflow kills the
whole session (its processes can't be trusted to stop), and a session that died (crash, OOM,
os._exit) is reported once with a message saying its state was lost; the next call starts a
clean one. Sessions idle for `session_idle_s` are closed by a reaper thread. At most
`max_sessions` exist at once, and their memory limits together stay within the memory budget
(`session_memory_budget_mb`, by default half of the host's memory): a new session that would
pass either evicts idle sessions, least recently used first, and is rejected only when the
sessions in the way are all running a call. An evicted session's next call starts a clean
interpreter and its answer says the state was lost and why. Evictions are counted in
`agentrl_sandbox_session_evictions_total{reason}`; the memory held in
`agentrl_sandbox_session_memory_reserved_bytes`.

A session keeps variables, imports and files, not processes: when a call returns, every process
it left running (`sleep 600 &`, a kept subprocess, a double-forked daemon) is SIGKILLed
(agentrl.sandbox.leftovers) and the answer says how many. The session's work dir is the
program's between calls, so request files are written and fetched files read without following
links (agentrl.sandbox.no_follow): a link the session planted makes the call `rejected`.
Without root the work dir is a tmpfs inside the session's own mount namespace
(agentrl.sandbox.private_tmpfs): it lives as long as the interpreter, so a session whose
interpreter was stopped (timeout, crash, eviction) starts with an empty work dir too.

Without cgroups (the service not root) the interpreter's processes are watched together
(agentrl.sandbox.run_watch) from its start to its stop, between calls too: a thread the program
left running is paused by SIGSTOP at `cpu_cores`, and memory held past the session's limit kills
the session; its next call is `oom` with the same message as an OOM during a call (the state
lost; the one after starts clean). A call that comes while the quota holds the interpreter
stopped waits for it: the frame waits in the pipe until the watch continues the interpreter
(the quota's debt over `cpu_cores`, at most one sample's CPU time ahead), then shares the quota
with the busy thread; the wait counts against the call's timeout.

What this module does NOT cover: persistence across service restarts or replicas (a session
lives in one process: route a trajectory's calls to one replica), per-call CPU/peak memory
(reported for the session's cgroup, cumulative peak), and threads a call starts in the
interpreter (they keep running between calls, within the session's limits).
"""

from __future__ import annotations

import json
import os
import select
import selectors
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap import SANDBOX_ENV, BwrapBackend, Slot
from agentrl.sandbox.capture import READ_CHUNK_BYTES, kill_group, spawn
from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult, RequestRejected, Status
from agentrl.sandbox.leftovers import end_leftovers, session_pids
from agentrl.sandbox.private_tmpfs import sandbox_pid
from agentrl.sandbox.run_watch import Watched

log = get_logger(__name__)

KERNEL_SOURCE = (Path(__file__).parent / "session_kernel.py").read_text()
# How often the reaper looks for idle sessions.
REAP_INTERVAL_S = 5.0
# Session ids are chosen by clients; bound them so they cannot bloat logs and maps.
MAX_SESSION_ID_CHARS = 128
# A new interpreter reports ready in well under a second; this allows for a loaded host.
KERNEL_START_TIMEOUT_S = 30.0
# Without session_memory_budget_mb, sessions may reserve this fraction of the host's memory:
# the rest is for one-shot runs (max_concurrency x their limit), the service and the host.
DEFAULT_BUDGET_FRACTION = 0.5
# Evicted session ids remembered so their next call can say why the state is gone.
MAX_EVICTED_REMEMBERED = 4096


def host_memory_mb() -> int:
    """MemTotal of /proc/meminfo in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo has no MemTotal")


@dataclass
class Session:
    id: str
    slot: Slot
    memory_mb: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    proc: object = None
    control_fd: int = -1
    lost_state: str = ""
    kernel_pids: frozenset[int] = frozenset()
    """The interpreter's own processes (bwrap, its init, the kernel), kept after each call."""
    watched: Watched | None = None
    """Without cgroups: the interpreter's processes summed and CPU-rated (run_watch) from its
    start to its stop, between calls too."""


class SessionManager:
    def __init__(self, backend: BwrapBackend, config: SandboxConfig) -> None:
        self.backend = backend
        self.config = config
        self._sessions: dict[str, Session] = {}
        self._evicted: OrderedDict[str, str] = OrderedDict()
        self.memory_budget_mb = config.session_memory_budget_mb or int(
            host_memory_mb() * DEFAULT_BUDGET_FRACTION
        )
        self.on_evict: Callable[[str], None] = lambda reason: None
        """Called with the reason of each eviction (the executor counts them)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()

    def count(self) -> int:
        return len(self._sessions)

    def reserved_mb(self) -> int:
        """Memory limits of the live sessions together."""
        return sum(session.memory_mb for session in list(self._sessions.values()))

    def _get(self, request: ExecutionRequest) -> Session:
        if len(request.session_id) > MAX_SESSION_ID_CHARS:
            raise RequestRejected(f"session_id must be at most {MAX_SESSION_ID_CHARS} chars")
        with self._lock:
            session = self._sessions.get(request.session_id)
            if session is not None:
                return session
            self._make_room(request.memory_mb)
            slot = self.backend.make_slot(f"session-{uuid.uuid4().hex[:12]}")
            session = Session(request.session_id, slot, request.memory_mb)
            why = self._evicted.pop(request.session_id, "")
            if why:
                session.lost_state = (
                    f"(a new interpreter: the session was evicted ({why}) while idle and its "
                    "state lost)"
                )
            self._sessions[request.session_id] = session
            return session

    def _make_room(self, memory_mb: int) -> None:
        """Evict idle sessions, least recently used first, until one more session of
        `memory_mb` fits both max_sessions and the memory budget (self._lock held)."""
        if memory_mb > self.memory_budget_mb:
            raise RequestRejected(
                f"a session of {memory_mb} MB exceeds the sessions' memory budget of "
                f"{self.memory_budget_mb} MB (session_memory_budget_mb); ask for less memory"
            )
        while True:
            too_many = len(self._sessions) >= self.config.max_sessions
            reserved = self.reserved_mb()
            if not too_many and reserved + memory_mb <= self.memory_budget_mb:
                return
            idle = [s for s in self._sessions.values() if not s.lock.locked()]
            if not idle:
                raise RequestRejected(
                    f"{len(self._sessions)} sessions open holding {reserved} MB, all running "
                    f"a call (max_sessions={self.config.max_sessions}, "
                    f"session_memory_budget_mb={self.memory_budget_mb}); retry later"
                )
            oldest = min(idle, key=lambda s: s.last_used)
            reason = "max_sessions" if too_many else "memory_budget"
            self._sessions.pop(oldest.id)
            self._evicted[oldest.id] = reason
            while len(self._evicted) > MAX_EVICTED_REMEMBERED:
                self._evicted.popitem(last=False)
            log.info("evicting idle session", extra={"session_id": oldest.id, "reason": reason})
            self._destroy(oldest)
            self.on_evict(reason)

    def _start(self, session: Session) -> None:
        slot = session.slot
        if slot.cgroup is not None:
            slot.cgroup.kill_all()
            slot.cgroup.set_limits(
                session.memory_mb, self.config.max_processes, self.config.cpu_cores
            )
        read_fd, write_fd = os.pipe()
        program = [self.config.python, "-c", KERNEL_SOURCE, str(write_fd)]
        argv = self.backend.command(
            slot, self.config.max_timeout_s * 1000, session.memory_mb, program, (write_fd,)
        )
        session.proc = spawn(argv, SANDBOX_ENV, pass_fds=(write_fd,))
        os.close(write_fd)
        watch = self.backend.run_watch if slot.cgroup is None else None
        if watch is not None:
            session.watched = watch.add_process(
                session.proc, session.memory_mb << 20, self.config.cpu_cores
            )
        session.control_fd = read_fd
        for stream in (session.proc.stdout, session.proc.stderr):
            os.set_blocking(stream.fileno(), False)
        self._await_ready(session)

    def _await_ready(self, session: Session) -> None:
        """Wait for the kernel's ready line, then record the session's processes: no untrusted
        code has run yet, so every one of them is the interpreter's own."""
        deadline = time.monotonic() + KERNEL_START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([session.control_fd], [], [], max(remaining, 0))
            chunk = os.read(session.control_fd, READ_CHUNK_BYTES) if readable else b""
            if not chunk:
                try:
                    stderr = session.proc.stderr.read() or b""
                except BlockingIOError:  # still running, silent: the deadline passed
                    stderr = b""
                self._stop_process(session)
                why = (
                    "exited before it was ready"
                    if readable
                    else f"was not ready within {KERNEL_START_TIMEOUT_S:g} s"
                )
                raise RuntimeError(
                    f"the session's interpreter {why}: {stderr.decode('utf-8', 'replace')[-500:]}"
                )
            line += chunk
        session.kernel_pids = frozenset(session_pids(session.proc.pid, session.slot.cgroup))
        if session.slot.dir.private:  # its /work is a tmpfs in the session's own namespace
            try:
                session.slot.dir.attach(sandbox_pid(session.proc.pid))
            except (OSError, RuntimeError):
                self._stop_process(session)
                raise

    def _stop_process(self, session: Session) -> None:
        if session.proc is not None:
            kill_group(session.proc)
            session.proc.wait()
            for stream in (session.proc.stdin, session.proc.stdout, session.proc.stderr):
                # A frame sent to an interpreter that died between calls stays in stdin's
                # buffer: closing flushes it into the broken pipe (the fd is closed anyway).
                with suppress(BrokenPipeError):
                    stream.close()
            session.proc = None
        if session.watched is not None:  # after the kill: nothing paused runs again
            self.backend.run_watch.remove(session.watched)
            session.watched = None
        if session.slot.cgroup is not None:
            session.slot.cgroup.kill_all()
        if session.control_fd >= 0:
            os.close(session.control_fd)
            session.control_fd = -1
        session.slot.dir.detach()  # a private /work ends with its interpreter

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        session = self._get(request)
        with session.lock:
            session.last_used = time.monotonic()
            notice, session.lost_state = session.lost_state, ""
            if session.proc is None:
                self._start(session)
            group = session.slot.cgroup
            oom_before = group.oom_kills() if group else 0
            cpu_before = group.cpu_time_s() if group else 0.0
            session.slot.dir.write_files(request.files)
            frame = json.dumps(
                {"code": request.code, "stdin": request.stdin.decode("utf-8", "replace")}
            ).encode()
            # Watched since the interpreter started: an OOM kill between calls (a thread the
            # program left running) reads here as the crash it left, with the same message.
            watched = session.watched
            result = self._call(session, b"%d\n" % len(frame) + frame, request)
            if watched is not None and watched.exceeded:
                result.status = Status.OOM
                held = f" ({watched.reason})" if watched.reason else ""
                result.message = (
                    f"killed: the session's processes and files held more than "
                    f"{session.memory_mb} MB together{held}; {result.message}"
                )
            if session.proc is not None:
                self._end_leftovers(session, result)
            if group is not None:
                result.cpu_time_s = group.cpu_time_s() - cpu_before
                result.peak_memory_mb = group.peak_memory_bytes() / (1024 * 1024)
                if session.proc is None and group.oom_kills() > oom_before:
                    result.status = Status.OOM
                    result.message = f"killed at the {session.memory_mb} MB memory limit; " + (
                        result.message
                    )
            if request.fetch_files:
                result.files = session.slot.dir.read_files(
                    request.fetch_files, self.config.disk_mb << 20
                )
            if notice:
                result.message = f"{notice} {result.message}".strip()
            result.backend, result.request_id = "bwrap", request.request_id
            session.last_used = time.monotonic()
            return result

    def _end_leftovers(self, session: Session, result: ExecutionResult) -> None:
        """SIGKILL what the call left running; a session whose leftovers outrun the kill (a
        fork bomb in the background) is stopped as a whole."""
        ended = end_leftovers(session.proc.pid, session.slot.cgroup, session.kernel_pids)
        if ended is None:
            self._stop_process(session)
            session.lost_state = "(a new interpreter: the previous one was stopped)"
            note = (
                "processes the call left running could not be stopped; the session was "
                "stopped and its state lost; the next call starts a clean interpreter"
            )
        elif ended:
            note = (
                f"ended {ended} background process(es) the call left running "
                "(a session keeps variables and files, not processes)"
            )
        else:
            return
        result.message = f"{result.message} {note}".strip()

    def _call(self, session: Session, frame: bytes, request: ExecutionRequest) -> ExecutionResult:
        """Send one cell and collect its output until the completion record or a limit."""
        proc = session.proc
        start = time.monotonic()
        deadline = start + request.timeout_s
        cap = self.config.max_output_bytes
        out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        truncated = dict.fromkeys(out, False)
        try:
            proc.stdin.write(frame)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        control = b""
        status: Status | None = None
        selector = selectors.DefaultSelector()
        for fd in (*out, session.control_fd):
            selector.register(fd, selectors.EVENT_READ)
        try:
            while status is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = Status.TIMEOUT
                    break
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, READ_CHUNK_BYTES)
                    if key.fd == session.control_fd:
                        control += chunk
                        if not chunk:
                            status = Status.ERROR  # the interpreter died
                        continue
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    room = cap - len(out[key.fd])
                    out[key.fd] += chunk[:room]
                    if len(chunk) > room:
                        truncated[key.fd] = True
                        status = Status.OUTPUT_LIMIT
                if control.endswith(b"\n") and status is None:
                    status = Status.OK
                    # Output the cell wrote just before finishing may still sit in the pipes.
                    for fd, buffer in out.items():
                        while True:
                            try:
                                chunk = os.read(fd, READ_CHUNK_BYTES)
                            except BlockingIOError:
                                break
                            if not chunk:
                                break
                            room = cap - len(buffer)
                            buffer += chunk[:room]
                            truncated[fd] = truncated[fd] or len(chunk) > room
        finally:
            selector.close()
        exit_code, message = -1, ""
        if status == Status.OK:
            record = json.loads(control.strip().splitlines()[-1])
            exit_code = int(record.get("exit_code", 0))
            status = Status.OK if exit_code == 0 else Status.ERROR
        else:
            self._stop_process(session)
            lost = "session state was lost; the next call starts a clean interpreter"
            message = {
                Status.TIMEOUT: f"killed at the {request.timeout_s:g} s wall-clock limit; {lost}",
                Status.OUTPUT_LIMIT: f"output passed {cap} bytes; the program was stopped; {lost}",
            }.get(status, f"the session's interpreter crashed; {lost}")
            session.lost_state = "(a new interpreter: the previous one was stopped)"
        stdout_fd, stderr_fd = list(out)
        return ExecutionResult(
            status=status,
            exit_code=exit_code,
            stdout=out[stdout_fd].decode("utf-8", "replace"),
            stderr=out[stderr_fd].decode("utf-8", "replace"),
            stdout_truncated=truncated[stdout_fd],
            stderr_truncated=truncated[stderr_fd],
            wall_time_s=time.monotonic() - start,
            message=message,
        )

    def close(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        with session.lock:
            self._destroy(session)
        return True

    def _destroy(self, session: Session) -> None:
        self._stop_process(session)
        self.backend.release_slot(session.slot)

    def _reap_loop(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            cutoff = time.monotonic() - self.config.session_idle_s
            with self._lock:
                idle = [
                    s
                    for s in self._sessions.values()
                    if s.last_used < cutoff and not s.lock.locked()
                ]
                for session in idle:
                    self._sessions.pop(session.id)
            for session in idle:
                log.info("closing idle session", extra={"session_id": session.id})
                with session.lock:
                    self._destroy(session)
                self.on_evict("idle")

    def close_all(self) -> None:
        self._stop.set()
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            self._destroy(session)
