"""The embedded default: every service of a recipe as local processes, supervised.

`agentrl up` starts a supervisor in the background and waits until each service is ready;
the supervisor starts `agentrl serve <service>` per service (logs in `<output_dir>/logs/`), each
in its own process group, restarts one that dies (at most `MAX_RESTARTS` times, with a growing
pause) after killing what is left of its process group (vLLM's EngineCore and workers, the
reward service's verifier processes: an orphan would hold memory and ports), and stops them
all on SIGTERM (`agentrl down`): SIGTERM to each, then each gets its stop grace to drain
(`stop_grace_s`: what its pod gets on Kubernetes; the rollout worker's follows
`rollout.shutdown_grace_s`), then SIGKILL to what is left of its group. Its state — pids,
addresses, restarts, each service's last exit code — is a JSON file in the run directory that
`agentrl status` reads and completes with live health probes.

Redis comes from the machine: when the recipe's Redis is on this host and not answering, the
supervisor starts `redis-server` for the run, with AOF in `<output_dir>/redis`
(`redis.local_appendfsync`, `everysec` by default; `off`: no persistence), restarts it if it
dies (from its AOF: the queued work survives) and stops it on the way down.

One vLLM server is a service of the stack too (`vllm`, when the recipe names a model and its
first `inference.urls` entry is on this host): the supervisor runs stock vLLM's OpenAI
server (agentrl.common.inference.launcher) on that URL's port and probes its `/health`.

Not covered: services on other machines (point the recipe at them instead); several vLLM servers
on one machine (list the extra URLs and start them by hand).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from agentrl.common.config import AgentRLConfig

# The stack's vLLM server: not an `agentrl serve` service, probed over HTTP only.
VLLM = "vllm"

STATE_FILE = "stack.json"
# A crash loop is a bug to look at, not to hide: give up on a service after 5 restarts.
MAX_RESTARTS = 5
# Pause before the n-th restart: 1 s, 2 s, 4 s ... capped, so a crash loop does not spin.
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
# How often the supervisor looks at its children.
POLL_INTERVAL_S = 0.5
# A service may take this long to become ready (the reward service spawns verifier processes).
READY_TIMEOUT_S = 120.0
# SIGTERM drains; past this a child is killed: Kubernetes' default terminationGracePeriodSeconds,
# which holds the gRPC services' drain (grpc_server.DEFAULT_GRACE_S, 20 s) and their clean-up.
STOP_GRACE_S = 30.0
# The rollout worker drains for rollout.shutdown_grace_s, then stops its servers, its vLLM pool
# and its clients: the chart's terminationGracePeriodSeconds adds the same to its grace.
ROLLOUT_STOP_MARGIN_S = 30.0
# `agentrl down` waits for the supervisor this long beyond the longest stop grace (Redis stops
# in 10 s at most, the state file is written last).
DOWN_MARGIN_S = 15.0


@dataclass
class ServiceState:
    name: str
    grpc_address: str
    http_url: str
    pid: int = 0
    restarts: int = 0
    status: str = "starting"  # starting | running | restarting | failed | stopped
    log: str = ""
    exit_code: int | None = None
    """How its last process ended (None while the first runs): 0 a clean exit (a drain after
    SIGTERM), negative the signal that killed it (-9: SIGKILL, by a crash or past its stop
    grace)."""


@dataclass
class StackState:
    supervisor_pid: int
    recipe: str
    services: dict[str, ServiceState] = field(default_factory=dict)
    redis_pid: int = 0


def state_path(config: AgentRLConfig) -> Path:
    return config.run.output_dir / STATE_FILE


def read_state(config: AgentRLConfig) -> StackState | None:
    path = state_path(config)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    services = {k: ServiceState(**v) for k, v in raw.pop("services").items()}
    return StackState(services=services, **raw)


def _write_state(config: AgentRLConfig, state: StackState) -> None:
    path = state_path(config)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(state), indent=2))
    temporary.replace(path)  # atomic: `agentrl status` never reads half a file


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def vllm_url(config: AgentRLConfig) -> str:
    return config.inference.urls[0].rstrip("/")


def vllm_is_local(config: AgentRLConfig) -> bool:
    """The recipe's first inference URL is on this host, so the stack can serve it."""
    return urlparse(vllm_url(config)).hostname in ("127.0.0.1", "localhost", "::1")


def check_ports(config: AgentRLConfig, services: list[str]) -> list[str]:
    """Every configured port that is taken, as a message saying which setting to change."""
    problems = []
    for name in services:
        if name == VLLM:
            url = urlparse(vllm_url(config))
            if url.port is None:
                problems.append(
                    f"inference.urls[0] ({vllm_url(config)}) has no port; "
                    "write it as http://127.0.0.1:PORT"
                )
            elif port_in_use(url.hostname, url.port):
                problems.append(
                    f"port {url.port} (the vLLM server of inference.urls[0]) is already "
                    f"taken: stop what uses it (`agentrl down`, or `ss -ltnp | grep {url.port}`) "
                    "or list another URL in inference.urls"
                )
            continue
        section = getattr(config, name)
        for key in ("grpc_port", "http_port"):
            port = getattr(section, key)
            if port == 0:
                problems.append(
                    f"{name}.{key} is 0 (a random port): give the local stack a fixed"
                    f" port (AGENTRL__{name.upper()}__{key.upper()}=...)"
                )
            elif port_in_use(section.host, port):
                problems.append(
                    f"port {port} ({name}.{key}) is already taken on {section.host}: "
                    f"stop what uses it (`agentrl down`, or `ss -ltnp | grep {port}`) "
                    f"or set AGENTRL__{name.upper()}__{key.upper()} to a free port"
                )
    return problems


def stop_grace_s(config: AgentRLConfig, name: str) -> float:
    """How long `agentrl down` lets service `name` drain after SIGTERM before SIGKILL."""
    if name == "rollout":
        return config.rollout.shutdown_grace_s + ROLLOUT_STOP_MARGIN_S
    return STOP_GRACE_S


def redis_command(config: AgentRLConfig, host: str, port: int) -> list[str]:
    """The stack's redis-server: AOF per `redis.local_appendfsync` in `<output_dir>/redis`."""
    fsync = config.redis.local_appendfsync
    data_dir = config.run.output_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = ["redis-server", "--bind", host, "--port", str(port), "--save", ""]
    command += ["--dir", str(data_dir)]
    if fsync == "off":
        return [*command, "--appendonly", "no"]
    return [*command, "--appendonly", "yes", "--appendfsync", fsync]


def kill_group(pid: int) -> None:
    """SIGKILL what is left of the process group `pid` led (its leader may be gone already)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _local_redis(config: AgentRLConfig) -> tuple[str, int] | None:
    url = urlparse(config.redis.url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    return (host, port) if host in ("127.0.0.1", "localhost", "::1") else None


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Supervisor:
    """Runs in its own process (`agentrl up` starts it): starts, watches, restarts, stops."""

    def __init__(self, config: AgentRLConfig, recipe: str, services: list[str]):
        self.config = config
        self.recipe = recipe
        self.logs = config.run.output_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state = StackState(supervisor_pid=os.getpid(), recipe=recipe)
        for name in services:
            if name == VLLM:
                grpc_address, http_url = "", vllm_url(config)
            else:
                section = getattr(config, name)
                grpc_address = section.target()
                http_url = f"http://{section.host}:{section.http_port}"
            self.state.services[name] = ServiceState(
                name=name,
                grpc_address=grpc_address,
                http_url=http_url,
                log=str(self.logs / f"{name}.log"),
            )
        self.processes: dict[str, subprocess.Popen] = {}
        self.next_start_at: dict[str, float] = {}
        self.redis: subprocess.Popen | None = None
        self.stopping = False

    def _start_redis(self) -> None:
        local = _local_redis(self.config)
        if local is None or redis_answers(*local):
            return
        self._spawn_redis(*local)

    def _spawn_redis(self, host: str, port: int) -> None:
        log = open(self.logs / "redis.log", "ab")  # noqa: SIM115 - the child keeps it open
        self.redis = subprocess.Popen(
            redis_command(self.config, host, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.state.redis_pid = self.redis.pid

    def _spawn(self, name: str) -> None:
        log = open(self.state.services[name].log, "ab")  # noqa: SIM115 - the child keeps it open
        command = (
            [sys.executable, "-m", "agentrl.common.inference.launcher"]
            if name == VLLM
            else [sys.executable, "-m", "agentrl.common.cli", "serve", name]
        )
        env = {**os.environ, "AGENTRL_RECIPE": self.recipe} if self.recipe else dict(os.environ)
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        service = self.state.services[name]
        service.pid, service.status = self.processes[name].pid, "running"

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._start_redis()
        for name in self.state.services:
            self._spawn(name)
        _write_state(self.config, self.state)
        while not self.stopping:
            self._watch()
            time.sleep(POLL_INTERVAL_S)
        self._stop_all()
        return 0

    def _watch(self) -> None:
        changed = False
        now = time.monotonic()
        if self.redis is not None and self.redis.poll() is not None:  # back from its AOF
            kill_group(self.redis.pid)
            self._spawn_redis(*_local_redis(self.config))
            changed = True
        for name, service in self.state.services.items():
            process = self.processes.get(name)
            if service.status == "restarting" and now >= self.next_start_at[name]:
                self._spawn(name)
                changed = True
            elif process is not None and service.status == "running" and process.poll() is not None:
                kill_group(process.pid)  # its children (vLLM's EngineCore...) die with it
                service.exit_code = process.returncode
                if service.restarts >= MAX_RESTARTS:
                    service.status = "failed"
                else:
                    delay = RESTART_BACKOFF_S[min(service.restarts, len(RESTART_BACKOFF_S) - 1)]
                    service.restarts += 1
                    service.status = "restarting"
                    self.next_start_at[name] = now + delay
                changed = True
        if changed:
            _write_state(self.config, self.state)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        children = {n: p for n, p in self.processes.items() if p.poll() is None}
        for process in children.values():
            process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for name, process in children.items():  # all drain at once, each within its own grace
            deadline = started + stop_grace_s(self.config, name)
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.state.services[name].exit_code = process.returncode
        for process in self.processes.values():  # what a child left behind (vLLM's engine)
            kill_group(process.pid)
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        for service in self.state.services.values():
            service.status = "stopped"
        _write_state(self.config, self.state)


@dataclass
class Probe:
    grpc_serving: bool
    http_ready: bool
    in_flight: float | None


def probe(service: ServiceState, timeout_s: float = 1.0) -> Probe:
    """Live health of one service: gRPC health, HTTP /readyz, in-flight calls from /metrics."""
    import grpc
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if not service.grpc_address:  # the vLLM server: /health, and its running requests
        return _probe_vllm(service.http_url, timeout_s)
    serving = False
    with grpc.insecure_channel(service.grpc_address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            pass
    ready, in_flight = False, None
    try:
        ready = httpx.get(f"{service.http_url}/readyz", timeout=timeout_s).status_code == 200
        metrics = httpx.get(f"{service.http_url}/metrics", timeout=timeout_s).text
        in_flight = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("agentrl_grpc_server_in_flight_requests")
        )
    except (httpx.HTTPError, ValueError, IndexError):
        pass
    return Probe(serving, ready, in_flight)


def _probe_vllm(url: str, timeout_s: float) -> Probe:
    import httpx

    try:
        healthy = httpx.get(f"{url}/health", timeout=timeout_s).status_code == 200
        metrics = httpx.get(f"{url}/metrics", timeout=timeout_s).text if healthy else ""
    except httpx.HTTPError:
        return Probe(False, False, None)
    running = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("vllm:num_requests_running")
    ]
    return Probe(healthy, healthy, sum(running) if running else None)


class StackError(RuntimeError):
    """The local stack could not start or stop; the message says what to do."""


@dataclass(frozen=True)
class ServiceProgress:
    """Where one service stands while `up` waits: what `agentrl up` shows."""

    name: str
    phase: str
    """starting | loading model (the vLLM server) | restarting | ready | failed"""
    elapsed_s: float
    """Seconds since `up` began; for a ready service, how long it took."""
    restarts: int
    log: str


def up(
    config: AgentRLConfig,
    recipe: str,
    services: list[str],
    on_progress: Callable[[list[ServiceProgress]], None] | None = None,
) -> StackState:
    """Start the supervisor in the background and wait until every service is ready;
    `on_progress` gets every service's phase after each look (the display of `agentrl up`)."""
    existing = read_state(config)
    if existing is not None and pid_alive(existing.supervisor_pid):
        raise StackError(
            f"a stack for {config.run.output_dir} is already up (supervisor pid "
            f"{existing.supervisor_pid}); see `agentrl status` or run `agentrl down`"
        )
    problems = check_ports(config, services)
    if _local_redis(config) is None and not _remote_redis_answers(config):
        problems.append(f"Redis at {config.redis.url} does not answer; start it or fix redis.url")
    if problems:
        raise StackError("cannot start the local stack:\n  " + "\n  ".join(problems))
    config.run.output_dir.mkdir(parents=True, exist_ok=True)
    state_path(config).unlink(missing_ok=True)
    log = open(config.run.output_dir / "supervisor.log", "ab")  # noqa: SIM115 - child keeps it
    command = [sys.executable, "-m", "agentrl.common.local_stack", "--services", ",".join(services)]
    env = {**os.environ, "AGENTRL_RECIPE": recipe} if recipe else dict(os.environ)
    supervisor = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    ready_timeout_s = max(
        READY_TIMEOUT_S, config.inference.server.start_timeout_s if VLLM in services else 0.0
    )
    started = time.monotonic()
    deadline = started + ready_timeout_s
    pending = set(services)
    ready_after: dict[str, float] = {}
    while pending:
        state = read_state(config)
        if supervisor.poll() is not None:
            raise StackError(
                f"the supervisor exited ({supervisor.returncode}); see "
                f"{config.run.output_dir / 'supervisor.log'}:\n"
                f"{_tail(str(config.run.output_dir / 'supervisor.log'))}"
            )
        for name in list(pending):
            service = state.services[name] if state else None
            if service is None:
                continue
            if service.status == "failed":
                _report(on_progress, state, services, ready_after, started, failed=name)
                down(config)
                raise StackError(
                    f"{name} keeps crashing ({service.restarts} restarts); its log, "
                    f"{service.log}, ends:\n{_tail(service.log)}"
                )
            result = probe(service)
            if result.grpc_serving and result.http_ready:
                pending.discard(name)
                ready_after[name] = time.monotonic() - started
        _report(on_progress, state, services, ready_after, started)
        if time.monotonic() > deadline:
            down(config)
            logs = "\n".join(
                f"{state.services[n].log} ends:\n{_tail(state.services[n].log, 10)}"
                for n in sorted(pending)
                if state and n in state.services
            )
            raise StackError(
                f"not ready after {ready_timeout_s:.0f} s: {', '.join(sorted(pending))}"
                f" (the wait: {READY_TIMEOUT_S:.0f} s, or inference.server.start_timeout_s "
                f"for vllm); {logs or 'see the logs in ' + str(config.run.output_dir / 'logs')}"
            )
        time.sleep(POLL_INTERVAL_S)
    return read_state(config)


def _report(
    on_progress: Callable[[list[ServiceProgress]], None] | None,
    state: StackState | None,
    services: list[str],
    ready_after: dict[str, float],
    started: float,
    failed: str = "",
) -> None:
    if on_progress is None:
        return
    now = time.monotonic() - started
    rows = []
    for name in services:
        service = state.services.get(name) if state else None
        if name == failed:
            phase = "failed"
        elif name in ready_after:
            phase = "ready"
        elif service is not None and service.status == "restarting":
            phase = "restarting"
        elif name == VLLM and service is not None:
            phase = "loading model"  # the process runs; /health answers once the model is in
        else:
            phase = "starting"
        rows.append(
            ServiceProgress(
                name=name,
                phase=phase,
                elapsed_s=ready_after.get(name, now),
                restarts=service.restarts if service else 0,
                log=service.log if service else "",
            )
        )
    on_progress(rows)


def down(config: AgentRLConfig, timeout_s: float | None = None) -> bool:
    """Stop the stack; False when none was running. `timeout_s`: how long to wait for the
    supervisor (default: the longest stop grace of its services, plus a margin)."""
    state = read_state(config)
    if state is None or not pid_alive(state.supervisor_pid):
        return False
    if timeout_s is None:
        graces = [stop_grace_s(config, name) for name in state.services]
        timeout_s = max([STOP_GRACE_S, *graces]) + DOWN_MARGIN_S
    os.kill(state.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(state.supervisor_pid) and time.monotonic() < deadline:
        _reap(state.supervisor_pid)
        time.sleep(0.2)
    if pid_alive(state.supervisor_pid):
        raise StackError(
            f"the supervisor (pid {state.supervisor_pid}) did not stop in "
            f"{timeout_s:.0f} s; kill it and its children by hand"
        )
    return True


def _reap(pid: int) -> None:
    """Collect the supervisor if this process started it (else it lingers as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _remote_redis_answers(config: AgentRLConfig) -> bool:
    url = urlparse(config.redis.url)
    return redis_answers(url.hostname or "127.0.0.1", url.port or 6379)


def _tail(path: str, num_lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


def _supervise() -> int:
    import argparse

    from agentrl.common.config import load_config

    parser = argparse.ArgumentParser(description="the local stack's supervisor (agentrl up)")
    parser.add_argument("--services", required=True)
    args = parser.parse_args()
    recipe = os.environ.get("AGENTRL_RECIPE", "")
    config = load_config(recipe or None)
    return Supervisor(config, recipe, args.services.split(",")).run()


if __name__ == "__main__":
    sys.exit(_supervise())
