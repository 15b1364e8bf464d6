"""The `bwrap` backend: each execution in fresh bubblewrap namespaces inside a limited slot.

A slot is a reusable bundle of host resources, one per concurrent execution plus spares: a
cgroup (memory, pids, cpu, cpuacct; agentrl.sandbox.cgroups) and a size-limited tmpfs work dir
(agentrl.sandbox.workdir). Each slot keeps a *warm* sandbox (agentrl.sandbox.bwrap_argv: the
launcher joins the cgroups, sets rlimits and drops to the sandbox uid, bwrap unshares every
namespace) running agentrl.sandbox.runner, which waits on stdin for one program; the slots,
their warm sandboxes and their recycling live in agentrl.sandbox.bwrap_slots. With cgroups
and the launcher, a slot's bwrap sandbox lasts for all its runs and each run starts in fresh
pid, IPC and mount namespaces inside it (agentrl.sandbox.slot_executor): the same isolation
between runs without bwrap's ~5 ms of CPU per run.

One run: write the files and the source into the slot, hand the source to the warm runner and
drive it with agentrl.sandbox.capture. The runner reports the program's exit status on a
control pipe once the program's observable shutdown is done, and the request is answered then,
without waiting for the interpreter and the namespaces to come down; the slot is recycled in
the background before it is handed out again. Bash, and Python when no warm sandbox is there, start
cold and are answered at EOF as before. On timeout or output overflow every process of the
cgroup is SIGKILLed at once; the pid namespace dies with its init anyway, so children that
called setsid() die too.

Limits per run: wall clock (timeout_s), memory (memory cgroup, OOM-killed -> status `oom`),
processes (pids.max), CPU share (cfs quota), disk (tmpfs size), core dumps off, file size, open
files and CPU seconds (rlimits). The cgroups are v1 (root) or a delegated cgroup v2 subtree
(agentrl.sandbox.cgroup_v2). Without any, the backend has no warm slots, bounds processes by
RLIMIT_NPROC in each run's own user namespace, memory by RLIMIT_AS per process plus the run's
processes added up (agentrl.sandbox.run_watch, which also applies the CPU quota by pausing a
run), and, without root, disk by tmpfs mounts bwrap makes in the run's own mount namespace
(agentrl.sandbox.private_tmpfs); the start-up report says which.

A seccomp filter (agentrl.sandbox.seccomp) denies Docker's default list of dangerous calls.

What this does NOT cover: kernel exploits through the calls the seccomp filter allows; CPU
side channels; /usr content
is readable (anything secret must not live under /usr or a ro_bind); disk I/O bandwidth; a
program printing "bwrap: ..." to stderr and exiting non-zero is reported as `sandbox_error`;
a background process the program left may still run for the milliseconds between the answer
and the recycler's SIGKILL (it can change nothing the answer holds: files are read back only
after the cgroup is emptied); reaping bwrap's orphaned inner init is left to the host's pid 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap_argv import MAX_OPEN_FILES, SANDBOX_ENV, find_tools, sandbox_argv
from agentrl.sandbox.bwrap_slots import RUNNER_SOURCE, Slot, SlotPool
from agentrl.sandbox.capture import Captured, drive, kill_group, spawn
from agentrl.sandbox.cgroup_v2 import detect_cgroups
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.docker_channel import ExecutorGone
from agentrl.sandbox.enforcement import Limit, bwrap_limits
from agentrl.sandbox.interface import (
    Backend,
    CompileResult,
    ExecutionRequest,
    ExecutionResult,
    Status,
)
from agentrl.sandbox.languages import BINARY_PATH, Language, get_language
from agentrl.sandbox.launch import FAILURE_PREFIX
from agentrl.sandbox.outcome import classify, compile_failure, compile_memory_mb, compile_outcome
from agentrl.sandbox.private_tmpfs import RELEASE, await_hold, hold_argv, sandbox_pid
from agentrl.sandbox.run_watch import RunWatch, Watched
from agentrl.sandbox.run_watch import supported as run_watch_supported
from agentrl.sandbox.slot_executor import build as build_executor
from agentrl.sandbox.slot_executor import sandbox_argv as slot_sandbox_argv
from agentrl.sandbox.workdir import CGROUP_PREFIX, SlotDir, check_traversable, sweep_stale

__all__ = [
    "MAX_OPEN_FILES",
    "RUNNER_SOURCE",
    "SANDBOX_ENV",
    "TEARDOWN_WAIT_S",
    "BwrapBackend",
    "Slot",
    "classify",
    "sweep_stale",
]

log = get_logger(__name__)

# A finished run's pid namespace tears down asynchronously; wait this long before force-killing.
TEARDOWN_WAIT_S = 1.0
# The compiled binary's name in the work dir (carried from compile to run in a private slot).
BINARY_NAME = BINARY_PATH.removeprefix("/work/")
# Warm slots beyond max_concurrency (this fraction of it, at least one): a request answered
# from the runner's control line leaves its slot tearing down and re-priming in the
# background, so at full concurrency the next request would otherwise wait for that.
SPARE_SLOT_FRACTION = 0.25
# What bwrap and the launcher print when they could not start the program (sandbox_error).
FAILURES = (b"bwrap: ", FAILURE_PREFIX)


class BwrapBackend(Backend):
    """Runs each request in fresh bubblewrap namespaces; `num_slots` runs at once.

    Python requests go to a warm slot and are answered as soon as the runner reports the
    program's exit status; recycler threads kill what is left of the run, empty the slot and
    start its next warm interpreter in the background, so a request's latency excludes both
    sandbox start-up and teardown. `num_slots` defaults to max_concurrency plus spares.
    """

    name = "bwrap"

    def __init__(self, config: SandboxConfig, num_slots: int | None = None) -> None:
        self.config = config
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root = Path(config.work_root) / self.instance
        is_root = os.geteuid() == 0
        if is_root:
            sweep_stale(Path(config.work_root))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        try:
            self.tools = find_tools(config, self.root)
            if self.tools.run_as is not None:
                check_traversable(self.root)
        except (RuntimeError, ValueError):
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.run_as = self.tools.run_as
        self.cgroups, self.cgroup_note = detect_cgroups(f"{CGROUP_PREFIX}{self.instance}", is_root)
        # Without cgroups, a run's processes are watched together (memory and CPU, sampled).
        self.run_watch: RunWatch | None = None
        if self.cgroups is None:
            log.warning("no usable cgroup (%s): limits fall back to rlimits", self.cgroup_note)
            if run_watch_supported():
                self.run_watch = RunWatch()
        else:
            log.info("sandbox cgroups: %s", self.cgroup_note)
            self.cgroups.weigh_as(min(num_slots or config.max_concurrency, config.max_concurrency))
        if num_slots is None:
            spare = max(1, math.ceil(config.max_concurrency * SPARE_SLOT_FRACTION))
            num_slots = config.max_concurrency + (spare if self.cgroups is not None else 0)
        self._all = [self.make_slot(f"slot-{index}") for index in range(num_slots)]
        if self.cgroups is not None and self.tools.launcher is not None:
            executor = build_executor(self.root)
            if executor is not None:
                self.tools = dataclasses.replace(self.tools, executor=executor)
        for slot in self._all:
            if self.tools.executor is not None and not slot.dir.private:
                slot.sandbox_argv = functools.partial(self._slot_sandbox_argv, slot)
        self.pool = SlotPool(self._all, config, self.command)

    # -- slots ---------------------------------------------------------------------------------

    def make_slot(self, name: str) -> Slot:
        """Fresh host resources for one sandbox (also used by sessions)."""
        group = self.cgroups.child(name) if self.cgroups else None
        slot_dir = SlotDir(
            self.root / name, self.config.disk_mb, self.run_as, self.tools.sized_tmpfs
        )
        return Slot(name, slot_dir, group)

    def release_slot(self, slot: Slot) -> None:
        slot.close()
        if slot.cgroup is not None:
            slot.cgroup.destroy()
        slot.dir.close()

    def pool_size(self) -> int:
        return self.pool.num_ready()

    def limits(self) -> list[Limit]:
        disk = "private" if any(slot.dir.private for slot in self._all) else "slot"
        if not all(slot.dir.mounted or slot.dir.private for slot in self._all):
            disk = "none"
        return bwrap_limits(
            self.config,
            cgroups=self.cgroups.version if self.cgroups is not None else None,
            cgroup_note=self.cgroup_note,
            seccomp=self.tools.seccomp_filter is not None,
            prlimit=self.tools.prlimit is not None,
            disk=disk,
            shm=self.tools.sized_tmpfs,
            run_watch=self.run_watch is not None,
            slot_sandbox=any(slot.sandbox_argv is not None for slot in self._all),
        )

    # -- execution -----------------------------------------------------------------------------

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        slot = self.pool.take()
        try:
            return self.run_in_slot(slot, request)
        finally:
            self.pool.recycle(slot)

    def run_in_slot(self, slot: Slot, request: ExecutionRequest) -> ExecutionResult:
        try:
            return self._run_in_slot(slot, request)
        except ExecutorGone as gone:  # the slot's sandbox could not start or died
            return ExecutionResult(
                status=Status.SANDBOX_ERROR,
                message=str(gone),
                backend=self.name,
                request_id=request.request_id,
            )
        finally:
            slot.dir.detach()  # a private slot's tmpfs is freed with its run

    def _run_in_slot(self, slot: Slot, request: ExecutionRequest) -> ExecutionResult:
        language = get_language(request.language)
        code = request.code.encode("utf-8", "surrogatepass")
        files = {**request.files, language.source_name: code}
        if not slot.dir.private:
            slot.dir.write_files(files)
        group = slot.cgroup
        proc, stdin = slot.warm, request.stdin
        slot.warm = None
        if group is not None:
            try:
                slot.limit(self.config, request.memory_mb)
            except OSError:  # the warm interpreter alone is above the requested limit
                slot.warm = proc
                slot.kill()
                proc = None
                slot.limit(self.config, request.memory_mb)
            group.reset_usage()
        if proc is not None and (language.name != "python" or proc.poll() is not None):
            slot.warm = proc
            slot.kill()
            proc = None
        compiled = None
        if language.compiler:
            compiled, binary = self._compile(slot, request, language, files)
            if compiled.status != Status.OK:
                return compile_failure(compiled, request, self.name)
            if binary is not None:  # a private slot: the binary goes into the run's tmpfs
                files[BINARY_NAME] = binary
            if group is not None:
                slot.limit(self.config, request.memory_mb)
                group.reset_usage()
        # Read before the program starts: a cold one runs as soon as it is started.
        oom_before = group.oom_kills() if group is not None else 0
        cpu_before = group.cpu_time_s() if group is not None else 0.0
        warm = proc is not None
        if warm:
            stdin = b"%d\n" % len(code) + code + stdin
        else:
            program = language.argv(self.config.python, f"/work/{language.source_name}")
            proc, release = self._spawn_cold(
                slot, request.timeout_s, request.memory_mb, program, files
            )
            stdin = release + stdin
        slot.spent = proc  # the recycler kills and reaps whatever of it is left
        captured, watched = self._drive(
            proc,
            group,
            request.memory_mb,
            stdin=stdin,
            timeout_s=request.timeout_s,
            max_output_bytes=self.config.max_output_bytes,
            kill_tree=slot.kill_run if group is not None else None,
            control_fd=slot.control_fd if warm else None,
        )
        if group is not None and not captured.exited and request.fetch_files:
            slot.kill_run()  # files are read back only once nothing can change them
        oomed = watched is not None and watched.exceeded
        cpu_time_s, peak_mb = captured.cpu_time_s, captured.max_rss_kb / 1024
        if watched is not None:
            peak_mb = max(peak_mb, watched.peak_bytes / (1024 * 1024))
        if group is not None:
            if captured.exited and not group.wait_empty(TEARDOWN_WAIT_S, exclude=slot.own_pids):
                slot.kill_run()
            oomed = group.oom_kills() > oom_before
            cpu_time_s = group.cpu_time_s() - cpu_before
            peak_mb = group.peak_memory_bytes() / (1024 * 1024)
        result = classify(captured, oomed, request, self.config.max_output_bytes, FAILURES)
        if getattr(proc, "lost", False):  # the slot sandbox's executor died: no exit status
            result.status, result.message = Status.SANDBOX_ERROR, "the slot's sandbox died"
        if result.status == Status.OOM and watched is not None:  # what the run held (run_watch)
            result.message += f" ({watched.reason})"
        result.cpu_time_s, result.peak_memory_mb = cpu_time_s, peak_mb
        result.backend, result.request_id = self.name, request.request_id
        result.compile_result = compiled
        if result.status != Status.SANDBOX_ERROR and request.fetch_files:
            result.files = slot.dir.read_files(request.fetch_files, self.config.disk_mb << 20)
        return result

    def _drive(
        self, proc: subprocess.Popen, group: Cgroup | None, memory_mb: int, **kwargs: object
    ) -> tuple[Captured, Watched | None]:
        """`drive`, with the run's processes watched together (agentrl.sandbox.run_watch)
        when no memory cgroup holds them."""
        if group is not None or self.run_watch is None:
            return drive(proc, **kwargs), None
        cores = self.config.cpu_cores
        with self.run_watch.watching_process(proc, memory_mb << 20, cores) as watched:
            return drive(proc, **kwargs), watched

    def _spawn_cold(
        self,
        slot: Slot,
        timeout_s: float,
        memory_mb: int,
        program: list[str],
        files: dict[str, bytes],
    ) -> tuple[subprocess.Popen, bytes]:
        """Start a sandbox running `program`; returns it and what its stdin must begin with.

        A private slot's sandbox starts behind the hold (agentrl.sandbox.private_tmpfs): once
        bwrap has mounted its tmpfs, `files` are written into it through the attached /work,
        and the returned RELEASE lets the program start. Otherwise the files are there already."""
        if slot.sandbox_argv is not None:
            return slot.start_in_sandbox(self.config, timeout_s, program), b""
        if not slot.dir.private:
            return spawn(self.command(slot, timeout_s, memory_mb, program), SANDBOX_ENV), b""
        proc = spawn(self.command(slot, timeout_s, memory_mb, hold_argv(program)), SANDBOX_ENV)
        try:
            await_hold(proc)
            slot.dir.attach(sandbox_pid(proc.pid))
            slot.dir.write_files(files, executable=(BINARY_NAME,))
        except BaseException:
            kill_group(proc)
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
            raise
        return proc, RELEASE

    def _compile(
        self, slot: Slot, request: ExecutionRequest, language: Language, files: dict[str, bytes]
    ) -> tuple[CompileResult, bytes | None]:
        """Run the compile step cold in the slot, under `compile_timeout_s`; nothing of it is
        left running when this returns. In a private slot the binary is read back from the
        compile's tmpfs (returned, to be written into the run's); otherwise None."""
        group = slot.cgroup
        memory_mb = compile_memory_mb(request, self.config)
        oom_before = 0
        if group is not None:
            slot.limit(self.config, memory_mb)
            oom_before = group.oom_kills()
        program = language.compile_argv(f"/work/{language.source_name}")
        proc, release = self._spawn_cold(slot, request.compile_timeout_s, memory_mb, program, files)
        captured, watched = self._drive(
            proc,
            group,
            memory_mb,
            stdin=release,
            timeout_s=request.compile_timeout_s,
            max_output_bytes=self.config.max_output_bytes,
            kill_tree=slot.kill_run if group is not None else None,
        )
        oomed = watched is not None and watched.exceeded
        if group is not None:
            if not group.wait_empty(TEARDOWN_WAIT_S, exclude=slot.own_pids):
                slot.kill_run()
            oomed = group.oom_kills() > oom_before
        binary = None
        if slot.dir.private:
            binary = slot.dir.read_files([BINARY_NAME], self.config.disk_mb << 20).get(BINARY_NAME)
            slot.dir.detach()
        outcome = compile_outcome(
            captured, oomed, request, memory_mb, self.config.max_output_bytes, FAILURES
        )
        return outcome, binary

    def _slot_sandbox_argv(self, slot: Slot, socket_fd: int) -> list[str]:
        return slot_sandbox_argv(self.config, self.tools, slot.dir, slot.cgroup, socket_fd)

    def command(
        self,
        slot: Slot,
        timeout_s: float,
        memory_mb: int,
        program: list[str],
        pass_fds: tuple[int, ...] = (),
    ) -> list[str]:
        """The full argv: launcher (cgroups, rlimits, uid), bwrap, program."""
        return sandbox_argv(
            self.config,
            self.tools,
            slot.dir,
            slot.cgroup,
            timeout_s,
            memory_mb,
            program,
            pass_fds,
        )

    def close(self) -> None:
        self.pool.close()
        for slot in self._all:  # every slot sandbox comes down at once, then each is reaped
            if slot.sandbox is not None:
                kill_group(slot.sandbox.proc)
        for slot in self._all:
            self.release_slot(slot)
        if self.cgroups is not None:
            self.cgroups.destroy()
        if self.run_watch is not None:
            self.run_watch.close()
        shutil.rmtree(self.root, ignore_errors=True)
