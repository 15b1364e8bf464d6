"""The `bwrap` backend: each execution in fresh bubblewrap namespaces inside a limited slot.

A slot is a reusable bundle of host resources, one per concurrent execution: a cgroup (memory,
pids, cpu, cpuacct; agentrl.sandbox.cgroups) and a size-limited tmpfs work dir
(agentrl.sandbox.workdir). One run: write the files and the source into the slot, start

    sh -c 'join the cgroups; set rlimits; exec "$@"' setpriv --reuid=nobody ... bwrap ... python3

and drive it with agentrl.sandbox.capture. bwrap unshares every namespace (user, pid, net, ipc,
uts, mount, cgroup), forbids nested user namespaces, drops all capabilities, binds /usr (and
`ro_binds`) read-only, gives a private /proc, a minimal /dev, and the slot's work/ and tmp/;
the root itself is read-only, so /work and /tmp are the only writable places.
The program therefore sees no network (only its own loopback: the service's ports, on the host's
loopback, are unreachable), no host processes, no host environment, no writable host path.
On timeout or output overflow every process of the cgroup is SIGKILLed; the pid namespace dies
with its init anyway, so children that called setsid() die too.

Limits per run: wall clock (timeout_s), memory (memory cgroup, OOM-killed -> status `oom`),
processes (pids.max), CPU share (cfs quota), disk (tmpfs size), core dumps off, file size, open
files and CPU seconds (rlimits). Without cgroup v1 (not root, cgroup v2 host) the backend falls
back to RLIMIT_AS for memory and RLIMIT_NPROC shared by all runs for processes, and says so in
the log.

What this does NOT cover: kernel exploits (no seccomp filter: the whole syscall surface of the
host kernel is reachable, minus what user namespaces restrict); CPU side channels; /usr content
is readable (anything secret must not live under /usr or a ro_bind); disk I/O bandwidth; a
program printing "bwrap: ..." to stderr and exiting non-zero is reported as `sandbox_error`.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.capture import Captured, drive, kill_group, spawn
from agentrl.sandbox.cgroups import Cgroup, CgroupParent
from agentrl.sandbox.interface import Backend, ExecutionRequest, ExecutionResult, Status
from agentrl.sandbox.languages import get_language
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
# A finished run's pid namespace tears down asynchronously; wait this long before force-killing.
TEARDOWN_WAIT_S = 1.0
# Host directories that hold the interpreter and its libraries on Debian-like systems.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
RUNNER_SOURCE = (Path(__file__).parent / "runner.py").read_text()
# Names of this service's cgroups: the prefix, then `<pid>-<random>` of the owning process.
CGROUP_PREFIX = "agentrl-sandbox-"


@dataclass
class Slot:
    """Host resources one running sandbox uses: its writable dirs, its cgroup (if any) and,
    when warm, a sandboxed interpreter already waiting for a program (agentrl.sandbox.runner)."""

    name: str
    dir: SlotDir
    cgroup: Cgroup | None
    warm: subprocess.Popen | None = None


class BwrapBackend(Backend):
    """Runs each request in fresh bubblewrap namespaces; `num_slots` runs at once.

    Python requests go to a warm slot; a recycler thread empties used slots and starts their
    next warm interpreter in the background, so a request's latency excludes sandbox start-up.
    """

    name = "bwrap"

    def __init__(self, config: SandboxConfig, num_slots: int | None = None) -> None:
        self.config = config
        self.bwrap = shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")
        if self.bwrap is None:
            raise RuntimeError("bubblewrap is not installed; `apt-get install -y bubblewrap`")
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root = Path(config.work_root) / self.instance
        is_root = os.geteuid() == 0
        # As root, the sandbox runs as an unprivileged host uid (nobody), not as mapped root.
        self.run_as: int | None = config.sandbox_uid if is_root and self.setpriv else None
        if is_root:
            sweep_stale(Path(config.work_root))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        if self.run_as is not None:
            try:
                _check_traversable(self.root)
            except ValueError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise
        self.cgroups = CgroupParent.detect(f"{CGROUP_PREFIX}{self.instance}") if is_root else None
        if self.cgroups is None:
            log.warning("no usable cgroup v1: memory and process limits fall back to rlimits")
        else:
            self.cgroups.weigh_as(num_slots or config.max_concurrency)
        # FIFO: the slot recycled longest ago has the most warmed-up interpreter.
        self._ready: queue.Queue[Slot] = queue.Queue()
        self._dirty: queue.Queue[Slot | None] = queue.Queue()
        self._all: list[Slot] = []
        for index in range(num_slots or config.max_concurrency):
            slot = self.make_slot(f"slot-{index}")
            self._all.append(slot)
            self._prime(slot)
            self._ready.put(slot)
        self._recycler = threading.Thread(target=self._recycle_loop, name="bwrap-recycler",
                                          daemon=True)
        self._recycler.start()

    # -- slots ---------------------------------------------------------------------------------

    def make_slot(self, name: str) -> Slot:
        """Fresh host resources for one sandbox (also used by sessions)."""
        group = self.cgroups.child(name) if self.cgroups else None
        return Slot(name, SlotDir(self.root / name, self.config.disk_mb, self.run_as), group)

    def release_slot(self, slot: Slot) -> None:
        self._kill(slot)
        if slot.cgroup is not None:
            slot.cgroup.destroy()
        slot.dir.close()

    def pool_size(self) -> int:
        return self._ready.qsize()

    def _prime(self, slot: Slot) -> None:
        """Start the slot's next warm interpreter (only with a cgroup: limits are set later)."""
        if slot.cgroup is None:
            return
        slot.cgroup.set_limits(max(self.config.default_memory_mb, 64),
                               self.config.max_processes, self.config.cpu_cores)
        program = [self.config.python, "-c", RUNNER_SOURCE]
        slot.warm = spawn(self.command(slot, self.config.max_timeout_s, 0, program), SANDBOX_ENV)

    def _kill(self, slot: Slot) -> None:
        if slot.warm is not None:
            kill_group(slot.warm)
            slot.warm.wait()
            for stream in (slot.warm.stdin, slot.warm.stdout, slot.warm.stderr):
                stream.close()
            slot.warm = None
        if slot.cgroup is not None and not slot.cgroup.kill_all():
            log.error("processes survived SIGKILL", extra={"slot": slot.name})

    def reset_slot(self, slot: Slot) -> None:
        """Kill what is left, empty the dirs and the cgroup's charges, start the next warm one."""
        self._kill(slot)
        slot.dir.clear()
        self._prime(slot)

    def _recycle_loop(self) -> None:
        while (slot := self._dirty.get()) is not None:
            try:
                self.reset_slot(slot)
            except Exception:
                log.exception("slot reset failed; starting it cold next time",
                              extra={"slot": slot.name})
            self._ready.put(slot)

    # -- execution -----------------------------------------------------------------------------

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        slot = self._ready.get()
        try:
            return self.run_in_slot(slot, request)
        finally:
            self._dirty.put(slot)

    def run_in_slot(self, slot: Slot, request: ExecutionRequest) -> ExecutionResult:
        language = get_language(request.language)
        code = request.code.encode("utf-8", "surrogatepass")
        slot.dir.write_files({**request.files, language.source_name: code})
        group = slot.cgroup
        proc, stdin = slot.warm, request.stdin
        slot.warm = None
        if group is not None:
            try:
                group.set_limits(request.memory_mb, self.config.max_processes,
                                 self.config.cpu_cores)
            except OSError:  # the warm interpreter alone is above the requested limit
                slot.warm = proc
                self._kill(slot)
                proc = None
                group.set_limits(request.memory_mb, self.config.max_processes,
                                 self.config.cpu_cores)
            group.reset_usage()
        if proc is not None and (language.name != "python" or proc.poll() is not None):
            slot.warm = proc
            self._kill(slot)
            proc = None
        if proc is not None:
            stdin = b"%d\n" % len(code) + code + stdin
        else:
            program = language.argv(self.config.python, f"/work/{language.source_name}")
            proc = spawn(self.command(slot, request.timeout_s, request.memory_mb, program),
                         SANDBOX_ENV)
        oom_before = group.oom_kills() if group is not None else 0
        cpu_before = group.cpu_time_s() if group is not None else 0.0
        captured = drive(
            proc, stdin=stdin, timeout_s=request.timeout_s,
            max_output_bytes=self.config.max_output_bytes,
            kill_tree=group.kill_all if group is not None else None,
        )
        oomed = False
        cpu_time_s, peak_mb = captured.cpu_time_s, captured.max_rss_kb / 1024
        if group is not None:
            if not group.wait_empty(TEARDOWN_WAIT_S):
                group.kill_all()
            oomed = group.oom_kills() > oom_before
            cpu_time_s = group.cpu_time_s() - cpu_before
            peak_mb = group.peak_memory_bytes() / (1024 * 1024)
        result = classify(captured, oomed, request, self.config.max_output_bytes)
        result.cpu_time_s, result.peak_memory_mb = cpu_time_s, peak_mb
        result.backend, result.request_id = self.name, request.request_id
        if result.status != Status.SANDBOX_ERROR and request.fetch_files:
            result.files = slot.dir.read_files(request.fetch_files, self.config.disk_mb << 20)
        return result

    def command(self, slot: Slot, timeout_s: float, memory_mb: int, program: list[str]) -> list[str]:
        """The full argv: shell prologue (cgroups, rlimits), setpriv, bwrap, program."""
        config = self.config
        prologue = slot.cgroup.join_script() if slot.cgroup is not None else ""
        # sh's ulimit -f counts 512-byte blocks; -t is CPU seconds, a backstop behind the wall
        # clock (a program using several cores may burn more CPU than wall time).
        cpu_s = math.ceil(timeout_s * max(1.0, config.cpu_cores)) + 1
        prologue += (f"ulimit -c 0; ulimit -f {config.disk_mb * 2048}; "
                     f"ulimit -n {MAX_OPEN_FILES}; ulimit -t {cpu_s}; ")
        if slot.cgroup is None:
            address_kb = (memory_mb + ADDRESS_SPACE_SLACK_MB) * 1024
            procs = config.max_processes * config.max_concurrency
            prologue += f"ulimit -v {address_kb}; ulimit -p {procs}; "
        argv = ["/bin/sh", "-c", prologue + 'exec "$@"', "sh"]
        if self.run_as is not None:
            argv += [self.setpriv, f"--reuid={self.run_as}", f"--regid={self.run_as}",
                     "--clear-groups", "--"]
        return argv + self.bwrap_args(slot) + ["--"] + program

    def bwrap_args(self, slot: Slot) -> list[str]:
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns",
                "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in self.config.ro_binds:
            args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--bind", str(slot.dir.work), "/work", "--bind", str(slot.dir.tmp), "/tmp",
                 "--chdir", "/work", "--remount-ro", "/"]
        return args

    def close(self) -> None:
        self._dirty.put(None)
        self._recycler.join(timeout=10)
        for slot in self._all:
            self.release_slot(slot)
        if self.cgroups is not None:
            self.cgroups.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_stale(work_root: Path) -> None:
    """Free what a crashed service process left: its cgroups and its mounted work dirs
    (instance dirs are named `<pid>-<random>` by both backends)."""
    CgroupParent.sweep_stale(CGROUP_PREFIX)
    if not work_root.is_dir():
        return
    for instance in work_root.iterdir():
        pid = instance.name.split("-")[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for slot_dir in instance.iterdir():
            subprocess.run(["umount", "-l", str(slot_dir)], capture_output=True, check=False)
        shutil.rmtree(instance, ignore_errors=True)


def _check_traversable(path: Path) -> None:
    """bwrap runs as the sandbox uid and must reach the slot dirs through every parent."""
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            raise ValueError(
                f"work_root: {parent} is not traversable by other users (mode o+x), so the "
                f"sandbox uid cannot reach {path}; choose another work_root or chmod o+x it")


def classify(
    captured: Captured, oomed: bool, request: ExecutionRequest, max_output_bytes: int,
    failure_prefixes: tuple[bytes, ...] = (b"bwrap: ",),
) -> ExecutionResult:
    """Turn what a process did into a typed result (the order of the checks matters).

    A non-zero exit with no stdout and stderr starting with one of `failure_prefixes` (what
    the sandbox tool prints when it could not start the program) is `sandbox_error`."""
    code = captured.returncode
    stderr = captured.stderr
    if captured.timed_out:
        status, message = Status.TIMEOUT, f"killed at the {request.timeout_s:g} s wall-clock limit"
    elif captured.output_exceeded:
        status = Status.OUTPUT_LIMIT
        message = f"output passed {max_output_bytes} bytes; the program was stopped"
    elif oomed:
        status, message = Status.OOM, f"killed at the {request.memory_mb} MB memory limit"
    elif code != 0 and stderr.startswith(failure_prefixes) and not captured.stdout:
        status, message = Status.SANDBOX_ERROR, stderr.decode("utf-8", "replace").strip()
    elif code == 0:
        status, message = Status.OK, ""
    else:
        status, message = Status.ERROR, ""
    return ExecutionResult(
        status=status, exit_code=code,
        stdout=captured.stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        stdout_truncated=captured.stdout_truncated, stderr_truncated=captured.stderr_truncated,
        wall_time_s=captured.wall_time_s, message=message,
    )
