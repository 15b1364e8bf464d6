"""Entry point of the rollout worker: `agentrl serve rollout` calls `main(config)`.

`start(config)` builds the pieces and returns at once (tests use it): the vLLM pool
(`inference.*`, background health checks), the tokenizer of the served checkpoint
(`inference.server.model_path`, else `model.path`; it decodes responses and tokenises
observations), the tools (`python` through the sandbox service at `sandbox.address` or
host:grpc_port, `search` through the search service at `search.address` or host:grpc_port; both
are always registered, and a call to a service that does not answer is an UNAVAILABLE
observation, not a crash), the reward client, the sampler (plain groups, or ARPO trees with
`rollout.arpo` for tasks with `tree_sampling`), the `RolloutWorker` on its own asyncio loop in a
thread (it also follows the run's published policy version from Redis), gRPC
`RolloutControlService` (GetStatus, Pause, Resume; health, reflection, metrics, auth from
agentrl.common.grpc_server) and HTTP /healthz, /readyz, /metrics.

`main` serves until SIGTERM/SIGINT (agentrl.common.shutdown): readiness and gRPC health turn
NOT_SERVING, the worker stops taking tasks and drains (`rollout.shutdown_grace_s`; the tasks
still running then are cancelled and stay unacked, reclaimed by another worker), then the
servers stop and it exits 0, within the grace plus `CANCEL_GRACE_S` (the local stack and the
chart give it 30 s beyond the grace). A worker loop that ends without a stop request (a crash)
exits 1, so a supervisor sees a failure.

What this does NOT cover: pausing the pool on a new policy version. The trainer's weight sync
pauses, reloads and resumes the vLLM servers itself (docs/rollout.md, "Policy versions"); Pause
and Resume here hold a worker's admission and its pool by hand (operators, tests).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from agentrl.common.config import AgentRLConfig

SERVICE_NAME = "agentrl.rollout.v1.RolloutControlService"
GRPC_WORKERS = 8  # control calls are rare; health checks and reflection share the threads
# Connections to the search service: as many as its most worker processes when it picks
# (search.workers 0: at most 8), so a busy rollout worker reaches all of them.
SEARCH_CONNECTIONS = 8
# After the drain's grace: cancelled tasks unwind (a Redis call in a thread is not interruptible
# but bounded by its own deadline); the worker thread is a daemon, the process exits regardless.
CANCEL_GRACE_S = 10.0


@dataclass
class RunningRolloutService:
    worker: Any
    thread: threading.Thread
    grpc: Any
    http: Any
    closers: list

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop taking tasks, drain (the worker's grace, or `timeout_s` to wait at most), stop."""
        self.grpc.set_serving(False)
        self.worker.request_stop()
        self.thread.join(timeout_s)
        self.grpc.stop(0)
        self.http.stop()
        for close in self.closers:
            close()


def start(
    config: AgentRLConfig,
    *,
    extra_sampling: dict[str, Any] | None = None,
    worker_id: str | None = None,
) -> RunningRolloutService:
    """Start the worker and its servers; return at once. `extra_sampling`: vLLM sampling fields
    added to every turn (tests constrain the tiny model with them)."""
    from transformers import AutoTokenizer

    from agentrl.common import grpc_client, grpc_server, http
    from agentrl.common.agent.arpo import TaskSampler
    from agentrl.common.agent.loop import AgentLoop
    from agentrl.common.agent.tools import ToolBox, sandbox_client
    from agentrl.common.inference.pool import InferencePool
    from agentrl.common.logging import get_logger
    from agentrl.proto.rollout.v1 import rollout_pb2_grpc
    from agentrl.reward.client import RewardClient
    from agentrl.rollout.metrics import RolloutMetrics
    from agentrl.rollout.servicer import RolloutControlServicer
    from agentrl.rollout.worker import RolloutWorker, default_worker_id

    settings = config.rollout
    model_path = config.served_model_path()
    if model_path is None:
        raise ValueError(
            "the rollout worker needs the served checkpoint's tokenizer: set "
            "inference.server.model_path or model.path"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Every service is retried while unreachable until its reconnect_deadline_s (a restart is a
    # pause); past it the group attempt fails and the worker retries or requeues the task.
    # One replica, or several with every python session pinned to one (sandbox.addresses).
    sandbox = sandbox_client(
        config.sandbox, outage=grpc_client.outage_for("sandbox", config.sandbox)
    )
    # Retrieve is idempotent: the channel's UNAVAILABLE retries are safe; the tool's timeout
    # bounds each call with its retries. Several connections, calls in turn: a search replica
    # with several worker processes gives each connection to one of them (search.workers).
    search_channel = grpc_client.create_spread_channel(
        config.search.target(),
        SEARCH_CONNECTIONS,
        outage=grpc_client.outage_for("search", config.search),
    )
    reward = RewardClient(
        config.reward.target(), outage=grpc_client.outage_for("reward", config.reward)
    )
    worker_id = worker_id or settings.worker_id or default_worker_id()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def body() -> None:
        pool = InferencePool.from_config(config.inference)
        await pool.start()
        tools = ToolBox.for_agents(
            sandbox, search_channel, settings.tool_timeout_s, settings.python_sessions
        )
        sampler = TaskSampler(
            AgentLoop(pool, tokenizer, tools),
            reward,
            worker_id=worker_id,
            arpo=settings.arpo,
            vocab_size=len(tokenizer),
            default_format=settings.tool_format,
            extra_sampling=extra_sampling,
        )
        worker = RolloutWorker(config, sampler, pool, metrics=RolloutMetrics(), worker_id=worker_id)
        holder["worker"] = worker
        try:
            await worker.run(on_started=ready.set)
        finally:
            await pool.close()

    def thread_main() -> None:
        try:
            asyncio.run(body())
        except Exception as exc:  # noqa: BLE001 - reported to start() and logged
            holder["error"] = exc
            get_logger(__name__).exception("rollout worker crashed")
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="rollout-worker", daemon=True)
    thread.start()
    ready.wait()
    if "error" in holder:
        raise RuntimeError(f"the rollout worker failed to start: {holder['error']!r}")
    worker = holder["worker"]
    servicer = RolloutControlServicer(worker)
    server = grpc_server.serve(
        lambda s: rollout_pb2_grpc.add_RolloutControlServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
        host=settings.host,
        port=settings.grpc_port,
        max_workers=GRPC_WORKERS,
    )
    app = http.create_app("rollout", ready=thread.is_alive)
    http_server = http.serve_in_thread(app, host=settings.host, port=settings.http_port)
    get_logger(__name__).info(
        "rollout worker ready",
        extra={
            "worker_id": worker_id,
            "grpc": server.address,
            "http": http_server.url,
            "inference_urls": config.inference.urls,
        },
    )
    return RunningRolloutService(
        worker, thread, server, http_server, [sandbox.close, search_channel.close, reward.close]
    )


def main(config: AgentRLConfig) -> None:
    """Serve until SIGTERM/SIGINT, drain the tasks in flight, then exit."""
    from agentrl.common.shutdown import install_shutdown_handler

    service = start(config)
    stopping = threading.Event()
    install_shutdown_handler(lambda _signum, _frame: stopping.set())
    while not stopping.wait(0.5) and service.thread.is_alive():
        pass
    service.stop(config.rollout.shutdown_grace_s + CANCEL_GRACE_S)
    if not stopping.is_set():
        raise SystemExit("the rollout worker's loop ended without a stop request; see above")
