"""The docker backend's warm pool: locked-down containers, reset between runs, recycled, refilled.

A `Container` is one long-lived container of `SandboxConfig.docker_image` plus what the host
keeps for it: a slot dir (agentrl.sandbox.workdir: a `disk_mb` tmpfs on the host whose work/
and tmp/ are bind-mounted at /work and /tmp) and the container's cgroups as the host sees them
(agentrl.sandbox.cgroups). Every container runs with `--network none`, a read-only root, all
capabilities dropped, no-new-privileges, a private IPC namespace, memory/pids/CPU limits, a
`disk_mb` /dev/shm, and
docker-init as PID 1 (it reaps orphans) over `sleep infinity`, both as INIT_UID. Programs run
in it through `docker exec` as `sandbox_uid` (agentrl.sandbox.docker_backend), so they cannot
signal the init and a run's `kill -1` cannot stop the container.

`ContainerPool` keeps `pool_size` containers. `take()` hands out a ready one (waiting for a
refill when none is); `give_back(container, reason)` queues it for a background worker that
either resets it (kill what is left of the run, empty /work and /tmp, start the next warm
interpreter) or, given a reason, recycles it (remove it, create a fresh one). Start-up removes
the containers and work dirs of service processes that died (found by the owner label).

What this module does NOT cover: a Docker daemon on another host or in a VM (work dirs and
cgroups are reached through this host's filesystem), cgroup v2, pulling images (the image must
exist locally: services/sandbox/image/build.sh).
"""

from __future__ import annotations

import os
import queue
import select
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from docker.types import Mount, Ulimit

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap import MAX_OPEN_FILES, RUNNER_SOURCE, SANDBOX_ENV
from agentrl.sandbox.capture import kill_group, spawn
from agentrl.sandbox.cgroups import Cgroup
from agentrl.sandbox.workdir import SlotDir

log = get_logger(__name__)

# Label carrying "<service pid>-<random>" of the instance that owns a container.
OWNER_LABEL = "agentrl.sandbox.owner"
# The idle init runs as this uid, the programs as sandbox_uid: without capabilities a program
# cannot signal a process of another uid, so it can neither kill nor ptrace the init.
INIT_UID = 65533
# Processes of a container besides the program's own: docker-init, sleep, the exec wrapper.
EXTRA_PROCESSES = 3
# Background workers resetting and re-creating containers; creation is mostly dockerd I/O
# (vfs copies the image per container), so a few in parallel fill a pool faster.
NUM_REFILL_WORKERS = 4
# A failed container creation (daemon restarting, disk full) is retried after this long.
REFILL_RETRY_S = 5.0
# Runs inside the container around every program: once the program exits, SIGKILL every
# process of the sandbox uid (kill -1 spares the caller and the INIT_UID processes), so a child
# that called setsid() dies with it and stops holding the exec's stdout open; then remove the
# SysV IPC objects the run made (the container's IPC namespace outlives the run). A run that
# kills this wrapper leaves them: the host checks and recycles (Container.left_sysv_ipc).
EXEC_WRAPPER = (
    '"$@"; status=$?; kill -s KILL -- -1 2>/dev/null; ipcrm --all 2>/dev/null; exit $status'
)
# The kernel's lists of SysV IPC objects, read in the container's IPC namespace; one header
# line each when empty.
SYSV_IPC_FILES = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")
# The warm interpreter writes this byte to stdout once it runs; the pool reads it before it
# calls the container ready, so a request never waits for `docker exec` to start.
READY_MARKER = b"\x00"
WARM_SOURCE = f"import os; os.write(1, {READY_MARKER!r})\n" + RUNNER_SOURCE
# Longest a warm interpreter may take to start (exec start-up on a loaded host: ~0.1-1 s).
PRIME_TIMEOUT_S = 30.0


def cli_env() -> dict[str, str]:
    """Environment of the `docker` CLI itself (never passed into the container)."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", **keep}


@dataclass
class Container:
    name: str
    id: str
    dir: SlotDir
    cgroup: Cgroup
    init_pid: int
    """docker-init's pid on the host; /proc/<it>/root is the container's filesystem."""
    runs: int = 0
    warm: subprocess.Popen | None = None
    """`docker exec` of a warm interpreter (agentrl.sandbox.runner) waiting for one program."""

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
        """Whether SysV shared memory, semaphores or message queues exist in the container's
        IPC namespace (a later run would see them); unreadable counts as yes."""
        result = subprocess.run(
            ["nsenter", f"--ipc=/proc/{self.init_pid}/ns/ipc", "--", "cat", *SYSV_IPC_FILES],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        return result.returncode != 0 or len(lines) > len(SYSV_IPC_FILES)

    def stop_programs(self, sandbox_uid: int) -> bool:
        """Kill the warm exec and every process of the sandbox uid; False if some survived."""
        if self.warm is not None:
            kill_group(self.warm)
            self.warm.wait()
            for stream in (self.warm.stdin, self.warm.stdout, self.warm.stderr):
                stream.close()
            self.warm = None
        return self.cgroup.kill_all(uid=sandbox_uid)


class ContainerPool:
    """`pool_size` containers, each either ready, running one program, or being reset."""

    def __init__(
        self,
        config: SandboxConfig,
        client,
        work_dir: Path,
        instance: str,
        on_recycle: Callable[[str], None],
    ) -> None:
        self.config = config
        self.client = client
        self.work_dir = work_dir
        self.instance = instance
        self.on_recycle = on_recycle
        self.docker_cli = "docker"
        self._ready: queue.Queue[Container] = queue.Queue()
        self._jobs: queue.Queue[tuple[Container | None, str] | None] = queue.Queue()
        self._live: dict[str, Container] = {}
        self._lock = threading.Lock()
        self._count = 0
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
        try:
            return self._ready.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(
                f"no warm container became free within {timeout_s:g} s "
                f"(pool_size={self.config.pool_size}; see the log)"
            ) from None

    def give_back(self, container: Container, reason: str = "") -> None:
        """Reset `container` for the next run, or recycle it when `reason` is given."""
        if not reason and container.runs >= self.config.runs_per_container:
            reason = "runs_per_container"
        if reason:
            self.on_recycle(reason)
        self._jobs.put((container, reason))

    def exec_argv(self, container: Container, program: list[str]) -> list[str]:
        """`docker exec` of `program` in /work as the sandbox uid, under EXEC_WRAPPER."""
        uid = self.config.sandbox_uid
        return [
            self.docker_cli,
            "exec",
            "-i",
            "-u",
            f"{uid}:{uid}",
            "-w",
            "/work",
            container.id,
            "/bin/sh",
            "-c",
            EXEC_WRAPPER,
            "sh",
            *program,
        ]

    def prime(self, container: Container) -> None:
        """Start the container's next warm interpreter (default limits) and wait until it runs."""
        config = self.config
        container.cgroup.set_limits(
            max(config.default_memory_mb, 64),
            config.max_processes + EXTRA_PROCESSES,
            config.cpu_cores,
        )
        program = [config.python, "-c", WARM_SOURCE]
        container.warm = spawn(self.exec_argv(container, program), cli_env())
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
        container.dir.clear()
        self.prime(container)

    def _create_retrying(self) -> Container | None:
        while not self._closed.is_set():
            with self._lock:
                self._count += 1
                name = f"agentrl-sandbox-{self.instance}-{self._count}"
            try:
                container = self._create(name)
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
        slot = SlotDir(self.work_dir / name, config.disk_mb, config.sandbox_uid)
        handle = None
        try:
            handle = self.client.containers.run(
                config.docker_image,
                ["sleep", "infinity"],
                name=name,
                detach=True,
                init=True,
                user=f"{INIT_UID}:{INIT_UID}",
                network_mode="none",
                ipc_mode="private",
                read_only=True,
                cap_drop=["ALL"],
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
                mounts=[
                    Mount("/work", str(slot.work), type="bind"),
                    Mount("/tmp", str(slot.tmp), type="bind"),
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
        except BaseException:
            if handle is not None:
                self._remove_id(handle.id)
            slot.close()
            raise
        container = Container(name, handle.id, slot, cgroup, pid)
        with self._lock:
            self._live[name] = container
        return container

    def _remove(self, container: Container) -> None:
        container.stop_programs(self.config.sandbox_uid)
        self._remove_id(container.id)
        container.dir.close()
        with self._lock:
            self._live.pop(container.name, None)

    def _remove_id(self, container_id: str) -> None:
        from docker.errors import NotFound

        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass

    def close(self) -> None:
        """Stop the workers, then remove every container (in parallel: vfs removal is slow)."""
        self._closed.set()
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(timeout=60)
        with self._lock:
            remaining = list(self._live.values())
        threads = [threading.Thread(target=self._remove, args=(c,)) for c in remaining]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
