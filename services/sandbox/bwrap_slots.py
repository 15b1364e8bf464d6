"""The bwrap backend's slots: host resources per concurrent run, kept warm, recycled in the
background.

    SlotPool.take() -> run in the slot (agentrl.sandbox.bwrap) -> SlotPool.recycle(slot)
        -> a recycler thread: kill, empty the dirs, prime the next warm sandbox -> ready again

A `Slot` bundles a cgroup (memory, pids, cpu, cpuacct; agentrl.sandbox.cgroups, or None
without one) and the work dir behind the sandbox's /work and /tmp (agentrl.sandbox.workdir).
With a cgroup (and a host work dir), a slot keeps a *warm* sandbox: bwrap already running
agentrl.sandbox.runner, which waits on stdin for one program, with the read end of its control
pipe in `control_fd`. A warm sandbox runs exactly one program.

After a run, `recycle` hands the slot to one of `RECYCLER_THREADS` threads, which SIGKILL every
process left in the slot's cgroup until it is empty, reap them, empty the work dir and start
the next warm sandbox; only then does the slot go back to the ready queue (first in, first
out), so the next run never meets the previous one's processes or files.

What this module does NOT cover: the runs themselves, the limits a run sets on its cgroup and
the argv of a sandbox (the backend's `command`, agentrl.sandbox.bwrap_argv).
"""

from __future__ import annotations

import functools
import os
import queue
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap_argv import SANDBOX_ENV, rlimits
from agentrl.sandbox.capture import kill_group, spawn
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.docker_channel import ContainerProcess, ExecutorGone
from agentrl.sandbox.slot_executor import EXTRA_PROCESSES, SlotSandbox
from agentrl.sandbox.workdir import SlotDir

log = get_logger(__name__)

RUNNER_SOURCE = (Path(__file__).parent / "runner.py").read_text()
# A warm interpreter starts from the runner compiled ahead (a code object, marshal's format, as
# hex on its command line): compiling RUNNER_SOURCE on every start cost 1.5-2.7 ms of CPU.
RUNNER_BOOT = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv.pop(2))))"
# Compiles the runner in the sandbox's own interpreter (marshal's format is its version's).
COMPILE_RUNNER = (
    "import marshal, sys\n"
    "sys.stdout.write(marshal.dumps(compile(sys.stdin.read(), '<string>', 'exec')).hex())"
)
# Threads tearing down and re-priming used slots. A reset mostly waits (the old sandbox's
# SIGKILL rounds, fork/exec of the next one while running sandboxes hold the CPUs), so one
# thread would cap throughput near 1 / (its wall time).
RECYCLER_THREADS = 4
# Compiling the runner once at start-up takes milliseconds; a loaded host gets this much.
COMPILE_TIMEOUT_S = 60.0
# How long the recycler lets a finished run's namespace end by itself before killing it.
SETTLE_S = 0.02
# The warm interpreter's memory limit until a run sets its own (enough for it to start).
MIN_WARM_MEMORY_MB = 64

# The backend's argv of one sandbox: (slot, timeout_s, memory_mb, program, pass_fds) -> argv.
Command = Callable[["Slot", float, int, list[str], tuple[int, ...]], list[str]]


@dataclass
class Slot:
    """Host resources one running sandbox uses: its writable dirs, its cgroup (if any) and,
    when warm, a sandboxed interpreter already waiting for a program (agentrl.sandbox.runner).

    With `sandbox_argv` (a cgroup, not private, the executor built) the slot keeps one bwrap
    sandbox for all its runs and starts each in fresh namespaces inside it
    (agentrl.sandbox.slot_executor); otherwise each run is a bwrap sandbox of its own."""

    name: str
    dir: SlotDir
    cgroup: Cgroup | None
    warm: subprocess.Popen | ContainerProcess | None = None
    control_fd: int = -1
    """Read end of the warm runner's control pipe (its exit-status line), -1 without one."""
    spent: subprocess.Popen | ContainerProcess | None = None
    """The last run's sandbox when its answer came from the control line: maybe still
    exiting; the recycler kills and reaps it before the slot is used again."""
    sandbox_argv: Callable[[int], list[str]] | None = None
    """The slot sandbox's argv for the executor's socket fd (None: a sandbox per run)."""
    sandbox: SlotSandbox | None = None

    @property
    def own_pids(self) -> frozenset[int]:
        """The slot sandbox's own processes (bwrap's, the executor), which no run's kill hits."""
        if self.sandbox is None or self.sandbox.own_pids is None:
            return frozenset()
        return self.sandbox.own_pids

    def spawn_sandbox(self) -> None:
        """Start the slot's sandbox without waiting for it (the next run waits)."""
        if self.sandbox_argv is not None and self.sandbox is None:
            self.sandbox = SlotSandbox.spawn(self.sandbox_argv)

    def limit(self, config: SandboxConfig, memory_mb: int) -> None:
        """Set the cgroup's limits for a run of `memory_mb` (the executor and a run's init
        count in pids.max besides the program's own processes)."""
        extra = EXTRA_PROCESSES if self.sandbox_argv is not None else 0
        self.cgroup.set_limits(memory_mb, config.max_processes + extra, config.cpu_cores)

    def kill_run(self) -> bool:
        """SIGKILL every process of the run (the whole cgroup, but a slot sandbox's own)."""
        return self.cgroup.kill_all(exclude=self.own_pids)

    def start_in_sandbox(
        self, config: SandboxConfig, timeout_s: float, program: list[str], control: bool = False
    ) -> ContainerProcess:
        """`program` started in the slot's sandbox (the sandbox first, when there is none)."""
        try:
            self.spawn_sandbox()
            self.sandbox.await_ready(self.cgroup)
            return self.sandbox.run(program, SANDBOX_ENV, rlimits(config, timeout_s, None), control)
        except ExecutorGone:
            self.stop_sandbox()
            raise

    def stop_sandbox(self) -> None:
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None

    def kill(self) -> None:
        """Kill and reap the slot's run (warm or spent) until its cgroup holds nothing else."""
        if self.sandbox is not None and not self.sandbox.alive():
            self.stop_sandbox()  # a dead executor: the sandbox starts again with the next run
        for proc in (self.warm, self.spent):
            if isinstance(proc, ContainerProcess):
                # A runner that wrote its status line exits at once, and the run's namespace
                # with it: a kill (cgroup reads and signals) is only for what did not.
                if not proc.reported_within(SETTLE_S):
                    self.kill_run()
                if proc.wait() < 0:  # no exit report: the executor is gone
                    self.stop_sandbox()
                proc.close()
            elif proc is not None:
                if proc.returncode is None:  # never signal a reaped pid: it may be reused
                    kill_group(proc)
                proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    stream.close()
        self.warm = self.spent = None
        if self.control_fd >= 0:
            os.close(self.control_fd)
            self.control_fd = -1
        if self.cgroup is not None and not self.cgroup.kill_all(exclude=self.own_pids):
            log.error("processes survived SIGKILL", extra={"slot": self.name})

    def close(self) -> None:
        """Kill the run and the slot's sandbox."""
        self.kill()
        self.stop_sandbox()
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def prime(self, config: SandboxConfig, command: Command) -> None:
        """Start the slot's next warm interpreter (only with a cgroup: limits are set later;
        and not in a private slot, whose files go in only once the sandbox is up)."""
        if self.cgroup is None or self.dir.private:
            return
        self.limit(config, max(config.default_memory_mb, MIN_WARM_MEMORY_MB))
        source, *code = runner_args(config.python)  # the control fd is the runner's argv[1]
        if self.sandbox_argv is not None:
            program = [config.python, "-c", source, "3", *code]
            self.warm = self.start_in_sandbox(config, config.max_timeout_s, program, True)
            self.control_fd = self.warm.control
            return
        read_fd, write_fd = os.pipe()
        program = [config.python, "-c", source, str(write_fd), *code]
        try:
            self.warm = spawn(
                command(self, config.max_timeout_s, 0, program, (write_fd,)),
                SANDBOX_ENV,
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.control_fd = read_fd

    def reset(self, config: SandboxConfig, command: Command) -> None:
        """Kill what is left, empty the dirs, start the next warm one."""
        self.kill()
        self.dir.clear()
        self.prime(config, command)


@functools.cache
def runner_args(python: str) -> tuple[str, ...]:
    """How `python -c` starts the runner: the boot line and the runner compiled by `python`
    itself (after the control fd on the command line), or the runner's source alone where that
    fails (the same program, compiled at each start)."""
    try:
        compiled = subprocess.run(
            [python, "-c", COMPILE_RUNNER],
            input=RUNNER_SOURCE,
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("runner not compiled ahead (%s): each warm start compiles it", error)
        return (RUNNER_SOURCE,)
    return (RUNNER_BOOT, compiled) if compiled else (RUNNER_SOURCE,)


class SlotPool:
    """`slots` handed out one run at a time, first primed first; recycled in the background."""

    def __init__(self, slots: list[Slot], config: SandboxConfig, command: Command) -> None:
        self.slots, self.config, self.command = slots, config, command
        self._ready: queue.Queue[Slot] = queue.Queue()
        self._dirty: queue.Queue[Slot | None] = queue.Queue()
        for slot in slots:  # all slot sandboxes start together; each prime waits for its own
            slot.spawn_sandbox()
        for slot in slots:
            slot.prime(config, command)
            self._ready.put(slot)
        self._recyclers = [
            threading.Thread(target=self._recycle_loop, name=f"bwrap-recycler-{index}", daemon=True)
            for index in range(min(RECYCLER_THREADS, len(slots)))
        ]
        for thread in self._recyclers:
            thread.start()

    def take(self) -> Slot:
        """The next ready slot (waits for one)."""
        return self._ready.get()

    def recycle(self, slot: Slot) -> None:
        """Give back a slot after its run; it is ready again once reset."""
        self._dirty.put(slot)

    def num_ready(self) -> int:
        return self._ready.qsize()

    def _recycle_loop(self) -> None:
        while (slot := self._dirty.get()) is not None:
            try:
                slot.reset(self.config, self.command)
            except Exception:
                log.exception(
                    "slot reset failed; starting it cold next time", extra={"slot": slot.name}
                )
            self._ready.put(slot)

    def close(self) -> None:
        """Stop the recyclers (the slots themselves are the backend's to release)."""
        for _ in self._recyclers:
            self._dirty.put(None)
        for thread in self._recyclers:
            thread.join(timeout=10)
