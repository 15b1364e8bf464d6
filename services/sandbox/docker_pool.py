"""The docker backend's warm pool: locked-down containers, reset between runs, recycled, refilled.

A `Container` is one long-lived container of `SandboxConfig.docker_image` plus what the host
keeps for it: a slot dir (agentrl.sandbox.workdir: a `disk_mb` tmpfs on the host whose work/
and tmp/ are bind-mounted at /work and /tmp, and whose ctl/, mode 0700 root, is bind-mounted at
/run/agentrl), the container's cgroups as the host sees them (agentrl.sandbox.cgroups) and the
connection to its executor (agentrl.sandbox.docker_channel). Every container runs with
`--network none`, a read-only root, no capabilities but CAP_SETUID and CAP_SETGID (the executor
needs them to start programs as `sandbox_uid`; a program, another uid, holds none),
no-new-privileges, a private IPC namespace, memory/pids/CPU limits, a `disk_mb` /dev/shm, and
docker-init as PID 1 (it reaps orphans) over the executor (agentrl.sandbox.docker_executor),
both as uid 0 of the container: programs run as `sandbox_uid`, so they can signal neither, and
a run's `kill -1` cannot stop the container.

`ContainerPool` keeps `pool_size` containers. `take()` hands out a ready one (waiting for a
refill when none is); `give_back(container, reason)` queues it for a background worker that
either resets it (kill what is left of the run, empty /work and /tmp, have the executor start
the next warm interpreter) or, given a reason, recycles it (remove it, create a fresh one). A
container whose executor is gone fails its reset and is recycled. Start-up removes the
containers and work dirs of service processes that died (found by the owner label).

What this module does NOT cover: a Docker daemon on another host or in a VM (work dirs, the
executor's socket and cgroups are reached through this host's filesystem), cgroup v2, pulling
images (the image must exist locally: services/sandbox/image/build.sh).
"""

from __future__ import annotations

import math
import os
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from docker.types import Mount, Ulimit

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap import MAX_OPEN_FILES, RUNNER_SOURCE, SANDBOX_ENV
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.docker_channel import ContainerProcess, ExecutorChannel
from agentrl.sandbox.workdir import SlotDir

log = get_logger(__name__)

# Label carrying "<service pid>-<random>" of the instance that owns a container.
OWNER_LABEL = "agentrl.sandbox.owner"
# Processes of a container besides the program's own: docker-init and the executor.
EXTRA_PROCESSES = 2
# The executor runs inside every container as the container's command (under docker-init).
EXECUTOR_SOURCE = (Path(__file__).parent / "docker_executor.py").read_text()
# Where the container sees its control directory (the executor's socket).
CONTROL_MOUNT = "/run/agentrl"
# Background workers resetting and re-creating containers; creation is mostly dockerd I/O
# (vfs copies the image per container), so a few in parallel fill a pool faster.
NUM_REFILL_WORKERS = 4
# A failed container creation (daemon restarting, disk full) is retried after this long.
REFILL_RETRY_S = 5.0
# The warm interpreter writes this byte to stdout once it runs; the pool reads it before it
# calls the container ready, so a request never waits for an interpreter to start.
READY_MARKER = b"\x00"
WARM_SOURCE = f"import os; os.write(1, {READY_MARKER!r})\n" + RUNNER_SOURCE
# Longest a warm interpreter may take to start (~0.05-1 s on a loaded host).
PRIME_TIMEOUT_S = 30.0


@dataclass
class Container:
    name: str
    id: str
    dir: SlotDir
    cgroup: Cgroup
    init_pid: int
    """docker-init's pid on the host; /proc/<it>/root is the container's filesystem."""
    channel: ExecutorChannel | None = None
    """The connection to the container's executor (None until it answered)."""
    runs: int = 0
    max_runs: int = 0
    """Runs before it is recycled (`runs_per_container`, less in the pool's first round)."""
    warm: ContainerProcess | None = None
    """A warm interpreter (agentrl.sandbox.runner) the executor started, waiting for a program."""
    ipc_left: bool = False
    """The executor's report of the last program: SysV IPC objects outlived its clean-up."""

    def alive(self) -> bool:
        return Path(f"/proc/{self.init_pid}").exists()

    def wrote_outside_workdir(self) -> bool:
        """Whether the last run left anything in /tmp, /dev/shm or /dev/mqueue (the only other
        places a program can write); unreadable counts as yes."""
        try:
            if not self.dir.is_empty("tmp"):
                return True
            for place in ("dev/shm", "dev/mqueue"):
                with os.scandir(Path(f"/proc/{self.init_pid}/root") / place) as entries:
                    if next(entries, None) is not None:
                        return True
        except OSError:
            return True
        return False

    def left_sysv_ipc(self) -> bool:
        """Whether SysV shared memory, semaphores or message queues outlived the executor's
        removal of what the last program made (a later run would see them)."""
        return self.ipc_left

    def stop_programs(self, sandbox_uid: int) -> bool:
        """Kill the warm interpreter and every process of the sandbox uid, and take the
        executor's report of the warm one; False if some survived or the executor is gone."""
        stopped = self.cgroup.kill_all(uid=sandbox_uid)
        if self.warm is not None:
            warm, self.warm = self.warm, None
            warm.close()
            warm.wait()
            stopped &= not warm.lost
        return stopped


def runs_before_recycle(number: int, pool_size: int, runs_per_container: int) -> int:
    """How many runs container `number` (1, 2, ... in creation order) serves. The pool's first
    `pool_size` containers start together; with equal budgets they would all be recycled at
    once, after about pool_size x runs_per_container runs, and requests would queue behind a
    refill that takes tens of seconds on a loaded vfs host. The first round's budgets are
    spread over (0, runs_per_container] instead, so recycles come one at a time."""
    if number > pool_size:
        return runs_per_container
    return max(1, math.ceil(runs_per_container * number / pool_size))


class ContainerPool:
    """`pool_size` containers, each either ready, running one program, or being reset."""

    def __init__(
        self,
        config: SandboxConfig,
        client,
        work_dir: Path,
        instance: str,
        on_recycle: Callable[[str], None],
        cgroup_parent: str = "",
    ) -> None:
        self.config = config
        self.cgroup_parent = cgroup_parent
        """Docker's `--cgroup-parent` for the containers ('' = Docker's default)."""
        self.client = client
        self.work_dir = work_dir
        self.instance = instance
        self.on_recycle = on_recycle
        self._ready: queue.Queue[Container] = queue.Queue()
        self._jobs: queue.Queue[tuple[Container | None, str] | None] = queue.Queue()
        self._live: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._discards: list[threading.Thread] = []
        self._closed = threading.Event()
        for _ in range(config.pool_size):
            self._jobs.put((None, "start"))
        self._workers = [
            threading.Thread(target=self._work, name=f"docker-pool-{i}", daemon=True)
            for i in range(min(NUM_REFILL_WORKERS, config.pool_size))
        ]
        for worker in self._workers:
            worker.start()

    def ready_count(self) -> int:
        return self._ready.qsize()

    def live_count(self) -> int:
        return len(self._live)

    def take(self, timeout_s: float) -> Container:
        """A ready container; one that died while it waited (its executor gone, the container
        stopped) is recycled instead of handed out."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                container = self._ready.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"no warm container became free within {timeout_s:g} s "
                    f"(pool_size={self.config.pool_size}; see the log)"
                ) from None
            if container.alive() and container.channel.alive():
                return container
            self.give_back(container, "executor_died")

    def take_for_session(self) -> Container:
        """A fresh container, made here (about a second on overlay2, 5-15 s on a loaded vfs
        host), that a session keeps for its lifetime: `discard` removes it; it is never reset
        nor handed to a one-shot run, and the pool's `pool_size` containers are never taken."""
        with self._lock:
            self._count += 1
            name = f"agentrl-sandbox-{self.instance}-{self._count}"
        return self._create(name)

    def discard(self, container: Container) -> threading.Thread:
        """Remove a session's container in a thread of its own (returned, started); the pool
        creates no replacement."""
        thread = threading.Thread(target=self._remove, args=(container,), daemon=True)
        with self._lock:
            self._discards = [t for t in self._discards if t.is_alive()] + [thread]
        thread.start()
        return thread

    def give_back(self, container: Container, reason: str = "") -> None:
        """Reset `container` for the next run, or recycle it when `reason` is given."""
        if not reason and container.runs >= container.max_runs:
            reason = "runs_per_container"
        if reason:
            self.on_recycle(reason)
        self._jobs.put((container, reason))

    def prime(self, container: Container) -> None:
        """Have the executor start the next warm interpreter (default limits) and wait until
        it runs."""
        config = self.config
        container.cgroup.set_limits(
            max(config.default_memory_mb, 64),
            config.max_processes + EXTRA_PROCESSES,
            config.cpu_cores,
        )
        program = [config.python, "-c", WARM_SOURCE]
        container.warm = container.channel.start(program, SANDBOX_ENV)
        stdout = container.warm.stdout.fileno()
        ready, _, _ = select.select([stdout], [], [], PRIME_TIMEOUT_S)
        marker = os.read(stdout, 1) if ready else b""
        if marker != READY_MARKER:
            error = b"" if container.warm.poll() is None else container.warm.stderr.read()
            container.stop_programs(config.sandbox_uid)
            raise RuntimeError(f"the warm interpreter did not start: {error[-300:]!r}")

    # -- background work -----------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            container, reason = job
            try:
                if container is not None and not reason:
                    try:
                        self._reset(container)
                        self._ready.put(container)
                        continue
                    except Exception:
                        log.exception("container reset failed", extra={"container": container.name})
                        reason = "reset_failed"
                        self.on_recycle(reason)
                if container is not None:
                    self._remove(container)
                fresh = self._create_retrying()
                if fresh is not None:
                    self.prime(fresh)
                    self._ready.put(fresh)
            except Exception:
                log.exception("container pool worker failed")

    def _reset(self, container: Container) -> None:
        if not container.stop_programs(self.config.sandbox_uid):
            raise RuntimeError("processes survived SIGKILL")
        if not container.alive():
            raise RuntimeError("the container stopped")
        if not container.channel.alive():
            raise RuntimeError("the container's executor is gone")
        container.dir.clear()
        container.ipc_left = False
        self.prime(container)

    def _create_retrying(self) -> Container | None:
        while not self._closed.is_set():
            with self._lock:
                self._count += 1
                number = self._count
                name = f"agentrl-sandbox-{self.instance}-{number}"
            try:
                container = self._create(name)
                container.max_runs = runs_before_recycle(
                    number, self.config.pool_size, self.config.runs_per_container
                )
            except Exception:
                log.exception("creating a container failed; retrying in %s s", REFILL_RETRY_S)
                self._closed.wait(REFILL_RETRY_S)
                continue
            if self._closed.is_set():
                self._remove(container)
                return None
            return container
        return None

    def _create(self, name: str) -> Container:
        config = self.config
        uid = config.sandbox_uid
        slot = SlotDir(self.work_dir / name, config.disk_mb, uid)
        control = slot.root / "ctl"
        control.mkdir(mode=0o700, exist_ok=True)
        os.chmod(control, 0o700)  # only the executor (uid 0) reaches its socket
        handle = None
        try:
            handle = self.client.containers.run(
                config.docker_image,
                [config.python, "-I", "-c", EXECUTOR_SOURCE, str(uid), str(uid)],
                name=name,
                detach=True,
                init=True,
                user="0:0",
                network_mode="none",
                ipc_mode="private",
                read_only=True,
                cap_drop=["ALL"],
                cap_add=["SETUID", "SETGID"],
                security_opt=["no-new-privileges"],
                hostname="sandbox",
                mem_limit=f"{config.max_memory_mb}m",
                memswap_limit=f"{config.max_memory_mb}m",
                pids_limit=config.max_processes + EXTRA_PROCESSES,
                nano_cpus=int(config.cpu_cores * 1e9),
                shm_size=f"{config.disk_mb}m",
                environment=SANDBOX_ENV,
                working_dir="/work",
                labels={OWNER_LABEL: self.instance},
                cgroup_parent=self.cgroup_parent or None,
                mounts=[
                    Mount("/work", str(slot.work), type="bind"),
                    Mount("/tmp", str(slot.tmp), type="bind"),
                    Mount(CONTROL_MOUNT, str(control), type="bind"),
                ],
                ulimits=[
                    Ulimit(name="core", soft=0, hard=0),
                    Ulimit(name="nofile", soft=MAX_OPEN_FILES, hard=MAX_OPEN_FILES),
                ],
            )
            handle.reload()
            pid = int(handle.attrs["State"]["Pid"])
            cgroup = Cgroup.of_process(pid) if pid else None
            if cgroup is None:
                raise RuntimeError(
                    "the container's cgroup v1 groups are not visible on this host; the docker "
                    "backend needs the daemon on this host with cgroup v1 (use backend: bwrap)"
                )
            channel = ExecutorChannel.connect(control)
        except BaseException:
            if handle is not None:
                self._remove_id(handle.id)
            slot.close()
            raise
        container = Container(name, handle.id, slot, cgroup, pid, channel)
        with self._lock:
            self._live[name] = container
        return container

    def _remove(self, container: Container) -> None:
        # Removal on vfs takes seconds: stop the programs first; the executor's report is not
        # waited for (removing the container ends it). A stopped container has no cgroups left.
        try:
            container.cgroup.kill_all(uid=self.config.sandbox_uid)
        except OSError:
            pass
        if container.warm is not None:
            container.warm.close()
        self._remove_id(container.id)
        container.channel.close()
        container.dir.close()
        with self._lock:
            self._live.pop(container.name, None)

    def _remove_id(self, container_id: str) -> None:
        from docker.errors import APIError, NotFound

        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:  # close() and a refill worker may remove the same container
            if "already in progress" not in str(exc):
                raise

    def close(self) -> None:
        """Stop the workers, then remove every container (in parallel: vfs removal is slow)."""
        self._closed.set()
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(timeout=60)
        with self._lock:
            discards = list(self._discards)
        for thread in discards:
            thread.join(timeout=60)
        with self._lock:
            remaining = list(self._live.values())
        threads = [threading.Thread(target=self._remove, args=(c,)) for c in remaining]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
