"""The `docker` backend: each execution forked by the executor inside a warm, locked-down container.

Containers come from a warm pool (agentrl.sandbox.docker_pool): no network, read-only root, no
capabilities but the executor's CAP_SETUID/CAP_SETGID, programs as a non-root uid,
memory/pids/CPU limits, a `disk_mb` tmpfs at /work and /tmp. Each container's command is a
small executor (agentrl.sandbox.docker_executor) that the service reaches over a unix socket in
a directory bind-mounted from the host (agentrl.sandbox.docker_channel): it forks each program
with pipes the service passed it, so a run costs a fork, not a `docker exec` (~100 ms of
dockerd, containerd and runc CPU each). A run: write the files and the source into the
container's (emptied) work dir from the host, set the request's memory limit on the container's
memory cgroup, hand the program to the warm interpreter the executor started before the request
came (agentrl.sandbox.runner, the same one bwrap uses; other languages start cold), and drive
its pipes with agentrl.sandbox.capture. When the program exits, the executor SIGKILLs every
process of the sandbox uid (setsid() children included) and removes the SysV IPC objects the
run made; on timeout or output overflow the host SIGKILLs them through the container's cgroup.
Statuses, output capping, file rules and request limits are the bwrap backend's (`classify`,
capture, workdir, limits). CPU time and peak memory come from the container's cgroup.

A container serves `runs_per_container` runs, and is recycled (removed, replaced in the
background) at once after a timeout, an OOM kill, a write outside /work (anything left in /tmp,
/dev/shm or /dev/mqueue), SysV IPC objects the executor could not remove, a process that
survived the kill, its executor gone (died, OOM-killed, stopped answering) or a docker failure.

Sessions (`session_id`: state kept across the calls of one trajectory) take a container of
their own out of the pool for their lifetime, removed when they end
(agentrl.sandbox.docker_sessions).

What this does NOT cover: kernel exploits (Docker's default seccomp profile is the only syscall
filter); a daemon on another host, rootless Docker or cgroup v2 (the host must reach the
containers' cgroups and bind-mount its tmpfs work dirs; the service runs as root); disk I/O
bandwidth. The executor's memory (~11 MB resident) counts against each run's memory limit.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from agentrl.common.config import SandboxConfig
from agentrl.common.logging import get_logger
from agentrl.sandbox.bwrap import SANDBOX_ENV, TEARDOWN_WAIT_S, sweep_stale
from agentrl.sandbox.capture import drive
from agentrl.sandbox.cgroups import CGROUP_ROOT, CgroupParent
from agentrl.sandbox.docker_pool import EXTRA_PROCESSES, OWNER_LABEL, Container, ContainerPool
from agentrl.sandbox.enforcement import Limit, docker_limits
from agentrl.sandbox.interface import (
    Backend,
    CompileResult,
    ExecutionRequest,
    ExecutionResult,
    Status,
)
from agentrl.sandbox.languages import Language, get_language
from agentrl.sandbox.outcome import classify, compile_failure, compile_memory_mb, compile_outcome
from agentrl.sandbox.workdir import CGROUP_PREFIX

log = get_logger(__name__)

# Seconds an API call to the daemon may take; container creation on vfs takes a few seconds.
DOCKER_API_TIMEOUT_S = 120
# Seconds start-up waits for the whole pool; creating one container on vfs takes ~4 s.
STARTUP_TIMEOUT_S = 180.0
# Compile-step outcomes after which the container is recycled, as after such a run.
RECYCLED = (Status.TIMEOUT, Status.OOM, Status.SANDBOX_ERROR)
# A run whose executor never reported (it died during the run) has no known outcome.
EXECUTOR_LOST = "the container's executor died during the run; its outcome is unknown"


class DockerBackend(Backend):
    """Runs each request through the executor of a warm container of the pool."""

    name = "docker"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.on_recycle = lambda reason: None  # the executor replaces it to count recycles
        if os.geteuid() != 0:
            raise RuntimeError(
                "backend: docker must run as root (it sets per-run limits in the "
                "containers' cgroups and mounts their tmpfs work dirs)"
            )
        try:
            self.client = docker.from_env(timeout=DOCKER_API_TIMEOUT_S)
            self.client.ping()
        except DockerException as exc:
            raise RuntimeError(
                f"no Docker engine answers ({exc}); start one with "
                "AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh"
            ) from exc
        try:
            self.client.images.get(config.docker_image)
        except ImageNotFound:
            raise RuntimeError(
                f"image {config.docker_image} does not exist; build it with "
                "bash services/sandbox/image/build.sh"
            ) from None
        self._sweep_stale()
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.root = Path(config.work_root) / self.instance
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        # The containers (the pool's and the sessions') live under a cgroup of this instance
        # weighted as the programs that can run at once, one per container up to
        # max_concurrency: cgroup v1 schedules a group as one process, so under Docker's own
        # parent all containers together would get one process's CPU on a busy host.
        self.cgroup_parent = CgroupParent.detect(f"{CGROUP_PREFIX}{self.instance}")
        if self.cgroup_parent is None:
            raise RuntimeError(
                "the docker backend needs cgroup v1 controllers on this host (use backend: bwrap)"
            )
        self.cgroup_parent.weigh_as(
            min(config.max_concurrency, config.pool_size + config.max_sessions)
        )
        cpu_group = self.cgroup_parent.paths["cpu"].relative_to(CGROUP_ROOT)
        if config.pool_size < config.max_concurrency:
            log.warning(
                "pool_size %d < max_concurrency %d: executions beyond the pool wait "
                "for a container",
                config.pool_size,
                config.max_concurrency,
            )
        self.pool = ContainerPool(
            config,
            self.client,
            self.root,
            self.instance,
            on_recycle=lambda reason: self.on_recycle(reason),
            cgroup_parent="/" + "/".join(cpu_group.parts[1:]),  # below the controller's mount
        )
        if not self._wait_for_pool(STARTUP_TIMEOUT_S):
            self.close()
            raise RuntimeError("no sandbox container started; see the log for Docker's error")

    def _wait_for_pool(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pool.ready_count() < self.config.pool_size and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.pool.ready_count() > 0

    def _sweep_stale(self) -> None:
        """Remove containers and work dirs of service processes that are gone."""
        for stale in self.client.containers.list(all=True, filters={"label": OWNER_LABEL}):
            pid = stale.labels.get(OWNER_LABEL, "").split("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                log.info("removing a stale sandbox container", extra={"container": stale.name})
                stale.remove(force=True)
        sweep_stale(Path(self.config.work_root))

    def make_sessions(self):
        """The session manager (agentrl.sandbox.docker_sessions): a container per session."""
        from agentrl.sandbox.docker_sessions import DockerSessionManager

        return DockerSessionManager(self.pool, self.config)

    def ready(self) -> bool:
        return self.pool.live_count() > 0

    def pool_size(self) -> int:
        return self.pool.ready_count()

    def limits(self) -> list[Limit]:
        return docker_limits(self.config)

    def execute(self, request: ExecutionRequest) -> ExecutionResult:
        container = self.pool.take(self.config.queue_timeout_s)
        reason = "sandbox_error"  # if _run raises, the container's state is unknown
        try:
            result, reason = self._run(container, request)
            return result
        finally:
            self.pool.give_back(container, reason)

    def _run(self, container: Container, request: ExecutionRequest) -> tuple[ExecutionResult, str]:
        """Run `request` in `container`; returns the result and why to recycle it ('' = don't)."""
        config = self.config
        container.runs += 1
        language = get_language(request.language)
        code = request.code.encode("utf-8", "surrogatepass")
        container.dir.write_files({**request.files, language.source_name: code})
        group = container.cgroup
        proc, stdin = container.warm, request.stdin
        container.warm = None
        max_processes = config.max_processes + EXTRA_PROCESSES
        try:
            group.set_limits(request.memory_mb, max_processes, config.cpu_cores)
        except OSError:  # the warm interpreter alone is above the requested limit
            container.warm = proc
            container.stop_programs(config.sandbox_uid)
            proc = None
            group.set_limits(request.memory_mb, max_processes, config.cpu_cores)
        group.reset_usage()
        if proc is not None and (language.name != "python" or proc.poll() is not None):
            container.warm = proc
            container.stop_programs(config.sandbox_uid)
            proc = None
        compiled = None
        if language.compiler:
            compiled = self._compile(container, request, language)
            if compiled.status != Status.OK:
                reason = compiled.status.value if compiled.status in RECYCLED else ""
                return compile_failure(compiled, request, self.name), reason
            group.set_limits(request.memory_mb, max_processes, config.cpu_cores)
            group.reset_usage()
        if proc is not None:
            stdin = b"%d\n" % len(code) + code + stdin
        else:
            program = language.argv(config.python, f"/work/{language.source_name}")
            proc = container.channel.start(program, SANDBOX_ENV)
        oom_before, cpu_before = group.oom_kills(), group.cpu_time_s()
        captured = drive(
            proc,
            stdin=stdin,
            timeout_s=request.timeout_s,
            max_output_bytes=config.max_output_bytes,
            kill_tree=lambda: group.kill_all(uid=config.sandbox_uid),
        )
        if proc.lost:  # the container stops with its executor, and its cgroups go with it
            result = classify(captured, False, request, config.max_output_bytes, ())
            if result.status not in (Status.TIMEOUT, Status.OUTPUT_LIMIT):
                result.status, result.message = Status.SANDBOX_ERROR, EXECUTOR_LOST
            result.backend, result.request_id = self.name, request.request_id
            result.compile_result = compiled
            return result, "executor_died"
        survived = not group.wait_empty(TEARDOWN_WAIT_S, uid=config.sandbox_uid)
        if survived:
            survived = not group.kill_all(uid=config.sandbox_uid)
        oomed = group.oom_kills() > oom_before
        result = classify(captured, oomed, request, config.max_output_bytes, failure_prefixes=())
        container.ipc_left = proc.ipc_left
        result.cpu_time_s = group.cpu_time_s() - cpu_before
        result.peak_memory_mb = group.peak_memory_bytes() / (1024 * 1024)
        result.backend, result.request_id = self.name, request.request_id
        result.compile_result = compiled
        if result.status != Status.SANDBOX_ERROR and request.fetch_files:
            result.files = container.dir.read_files(request.fetch_files, config.disk_mb << 20)
        reason = (
            "timeout"
            if result.status == Status.TIMEOUT
            else "oom"
            if result.status == Status.OOM
            else "sandbox_error"
            if result.status == Status.SANDBOX_ERROR
            else "survivors"
            if survived
            else "died"
            if not container.alive()
            else "write_outside_workdir"
            if container.wrote_outside_workdir()
            else "sysv_ipc"
            if container.left_sysv_ipc()
            else ""
        )
        return result, reason

    def _compile(
        self, container: Container, request: ExecutionRequest, language: Language
    ) -> CompileResult:
        """Run the compile step through its own exec, under `compile_timeout_s`."""
        config, group = self.config, container.cgroup
        memory_mb = compile_memory_mb(request, config)
        group.set_limits(memory_mb, config.max_processes + EXTRA_PROCESSES, config.cpu_cores)
        oom_before = group.oom_kills()
        program = language.compile_argv(f"/work/{language.source_name}")
        proc = container.channel.start(program, SANDBOX_ENV)
        captured = drive(
            proc,
            stdin=b"",
            timeout_s=request.compile_timeout_s,
            max_output_bytes=config.max_output_bytes,
            kill_tree=lambda: group.kill_all(uid=config.sandbox_uid),
        )
        if not group.wait_empty(TEARDOWN_WAIT_S, uid=config.sandbox_uid):
            group.kill_all(uid=config.sandbox_uid)
        if proc.lost:
            raise RuntimeError(EXECUTOR_LOST)
        oomed = group.oom_kills() > oom_before
        container.ipc_left = proc.ipc_left
        return compile_outcome(captured, oomed, request, memory_mb, config.max_output_bytes, ())

    def close(self) -> None:
        self.pool.close()
        self.cgroup_parent.destroy()
        shutil.rmtree(self.root, ignore_errors=True)
