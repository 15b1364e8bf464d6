"""Sessions on the docker backend: a container of its own per session, one interpreter in it.

The contract is the bwrap backend's (agentrl.sandbox.sessions, whose SessionManager this
subclasses: the same request and answer fields, `session_idle_s`, `max_sessions`, the memory
budget with least-recently-used eviction of idle sessions and a `rejected` answer saying "retry
later" when every session in the way is running a call, the per-call timeout and output cap,
and the messages). What differs is where a session lives:

- Its first call creates a container for the session's lifetime
  (`ContainerPool.take_for_session`: the pool's settings and lock-down, about a second on
  overlay2, 5-15 s on a loaded vfs host). The pool's `pool_size` containers are never taken,
  so one-shot runs keep all of them whatever the sessions do; session containers number at
  most `max_sessions` (and their memory limits fit `session_memory_budget_mb`), on top of the
  pool.
- The container's executor (agentrl.sandbox.docker_executor) forks the session's interpreter
  (agentrl.sandbox.session_kernel) as the sandbox uid, with its control pipe as fd 3; the
  service then writes each call to its stdin and reads its stdout, stderr and control pipe
  directly, as bwrap's sessions do. The container's memory cgroup gets the session's limit.
- After each call every process of the container but docker-init, the executor and the
  interpreter (recorded when the interpreter reported ready, before any untrusted code) is
  SIGKILLed (agentrl.sandbox.leftovers, through the container's cgroup).
- A timeout, output overflow, crash or OOM kill stops the interpreter and marks the container
  spent: the next call of the session gets a fresh container (an empty work dir) and a message
  saying the state was lost. Nothing of one session can meet another's or a later run's: a
  session's container is removed, never reset or handed back to the pool, when the session is
  closed (CloseSession waits for the removal, up to CLOSE_WAIT_S), evicted or idles out.

Files stay in the container's /work between calls; request files are written and fetched files
read without following links (agentrl.sandbox.workdir), so a link the session planted makes the
call `rejected`, as on bwrap.

What this module does NOT cover: what bwrap's sessions do not (persistence across restarts or
replicas, per-call peak memory, threads of the interpreter between calls); SysV IPC objects
and files in /tmp or /dev/shm persist between the calls of a session (they go with its
container); session containers are not counted in `pool_size` or the pool metrics.
"""

from __future__ import annotations

import os
import threading

from agentrl.common.config import SandboxConfig
from agentrl.sandbox.bwrap import SANDBOX_ENV
from agentrl.sandbox.docker_channel import ExecutorGone
from agentrl.sandbox.docker_pool import EXTRA_PROCESSES, Container, ContainerPool
from agentrl.sandbox.interface import ExecutionRequest, ExecutionResult
from agentrl.sandbox.sessions import KERNEL_SOURCE, Session, SessionManager

# The fd the executor gives the interpreter for its control pipe (after stdin, stdout, stderr).
CONTROL_FD = 3
# Longest CloseSession waits for the container's removal (seconds on overlay2; on vfs, which
# deletes a copy of the whole image, 11-19 s at load 10 on 2 cores): below the client's 30 s
# deadline (agentrl.sandbox.client.DEADLINE_MARGIN_S).
CLOSE_WAIT_S = 20.0


class SessionBox:
    """A docker session's slot: the container it holds (None before its first call, or after
    its container was given up) and whether that container is spent (its interpreter stopped)."""

    def __init__(self) -> None:
        self.container: Container | None = None
        self.spent = False

    @property
    def cgroup(self):
        return self.container.cgroup

    @property
    def dir(self):
        return self.container.dir


class _Boxes:
    """What SessionManager asks of its backend: a slot per new session."""

    name = "docker"

    def make_slot(self, name: str) -> SessionBox:
        return SessionBox()


class DockerSessionManager(SessionManager):
    def __init__(self, pool: ContainerPool, config: SandboxConfig) -> None:
        self.pool = pool
        self.close_wait_s = CLOSE_WAIT_S
        super().__init__(_Boxes(), config)

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        result = super().execute(request)
        result.backend = "docker"
        return result

    def _start(self, session: Session) -> None:
        box: SessionBox = session.slot
        if box.container is not None and box.spent:
            self.pool.discard(box.container)
            box.container = None
        if box.container is None:
            box.container, box.spent = self.pool.take_for_session(), False
        container, config = box.container, self.config
        container.cgroup.set_limits(
            session.memory_mb, config.max_processes + EXTRA_PROCESSES, config.cpu_cores
        )
        program = [config.python, "-c", KERNEL_SOURCE, str(CONTROL_FD)]
        try:
            session.proc = container.channel.start(program, SANDBOX_ENV, control=True)
        except ExecutorGone:
            box.spent = True
            raise
        session.control_fd = session.proc.control
        for stream in (session.proc.stdout, session.proc.stderr):
            os.set_blocking(stream.fileno(), False)
        self._await_ready(session)

    def _stop_process(self, session: Session) -> None:
        """Kill the interpreter and everything of the sandbox uid; the container is spent."""
        box: SessionBox = session.slot
        if session.proc is not None:
            if box.container is not None:
                try:
                    box.container.cgroup.kill_all(uid=self.config.sandbox_uid)
                except OSError:  # the container stopped: its cgroups are gone
                    pass
            session.proc.close()
            session.proc = None
            box.spent = True
        if session.control_fd >= 0:
            os.close(session.control_fd)
            session.control_fd = -1

    def _give_up(self, session: Session) -> threading.Thread | None:
        """Stop the session's programs and start removing its container."""
        self._stop_process(session)
        container, session.slot.container = session.slot.container, None
        return self.pool.discard(container) if container is not None else None

    def _destroy(self, session: Session) -> None:
        """Eviction, idling out, shutdown: the container is removed in the background."""
        self._give_up(session)

    def close(self, session_id: str) -> bool:
        """End a session: its programs are killed at once; returns once its container is
        removed, or after `close_wait_s` (the removal goes on in the background)."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        with session.lock:
            removal = self._give_up(session)
        if removal is not None:
            removal.join(self.close_wait_s)
        return True
