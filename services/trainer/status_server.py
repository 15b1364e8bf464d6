"""What a running trainer serves while `agentrl train` runs: its status and its metrics.

    gRPC  trainer.host:trainer.grpc_port   agentrl.trainer.v1.TrainerStatusService/GetStatus,
                                           plus grpc.health.v1 and reflection, as every service
    HTTP  trainer.host:trainer.http_port   /metrics  Prometheus: agentrl_trainer_step_index and
                                                     agentrl_trainer_step_metric_value{metric}
                                           /healthz  the process is up
                                           /readyz   200 once the first step is under way

Prometheus scrapes the trainer like any other service (deploy/grafana's "Training" row reads
these gauges); `GetStatus` answers "where is the run" without reading the run directory. Ports
0 pick free ones. A port already taken stops `agentrl train` before any work, naming the
setting to change.

`StatusBoard` is the run's status, updated by the loop (rl_loop.py) from its own thread and
read by gRPC threads: one lock, and `snapshot()` hands out copies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Self

import grpc
from prometheus_client import CollectorRegistry

from agentrl.common import grpc_server
from agentrl.common.http import create_app, serve_in_thread
from agentrl.proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = "agentrl.trainer.v1.TrainerStatusService"
# The loop's phases, in the order a step goes through them (`evaluating` when an evaluation runs).
PHASES = ("starting", "evaluating", "training", "syncing", "checkpointing", "done")
# Status calls are cheap and few (dashboards, `grpcurl`): a small pool.
MAX_WORKERS = 4


class StatusBoard:
    """The trainer's status: phase, step, version, counters, the latest step's metrics."""

    def __init__(self, run_id: str) -> None:
        self._lock = threading.Lock()
        self._status = trainer_pb2.TrainerStatus(run_id=run_id, phase="starting")

    def set_phase(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
        with self._lock:
            self._status.phase = phase

    def set_position(
        self, step: int, policy_version: int, history: Iterable[dict[str, Any]] = ()
    ) -> None:
        """Where a (resumed) run stands before its first step. `history`: the run's step records
        (metrics.jsonl), so the counters are the run's, not this process's; records past `step`
        (written before a kill, after the last checkpoint) and repeats of a step are skipped."""
        latest = {record["step"]: record for record in history if record["step"] <= step}
        for recorded in sorted(latest):
            self.record_step(latest[recorded])
        with self._lock:
            self._status.step, self._status.policy_version = step, policy_version

    def record_step(self, record: dict[str, Any]) -> None:
        """Take in one step's metrics record (driver.step_metrics plus the loop's extras)."""
        numbers = {
            name: float(value)
            for name, value in record.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        num_groups = int(numbers.get("num_groups", 0))
        dropped = round(num_groups * (1.0 - numbers.get("kept_group_ratio", 1.0)))
        with self._lock:
            status = self._status
            status.step = int(record["step"])
            status.policy_version = int(numbers.get("policy_version", status.policy_version))
            status.samples_consumed += int(numbers.get("num_samples", 0))
            status.prompts_admitted = int(numbers.get("prompts_admitted", status.prompts_admitted))
            status.groups_dropped_zero_signal += dropped
            status.samples_dropped_stale += int(numbers.get("samples_dropped_stale", 0))
            status.last_metrics.clear()
            status.last_metrics.update(numbers)

    def snapshot(self) -> trainer_pb2.TrainerStatus:
        with self._lock:
            copy = trainer_pb2.TrainerStatus()
            copy.CopyFrom(self._status)
        return copy


class TrainerStatusServicer(trainer_pb2_grpc.TrainerStatusServiceServicer):
    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def GetStatus(
        self, request: trainer_pb2.GetTrainerStatusRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.TrainerStatus:
        return self.board.snapshot()


class StatusServers:
    """The trainer's gRPC and HTTP servers; `stop()` ends both."""

    def __init__(self, grpc: grpc_server.GrpcServer, http: Any) -> None:
        self.grpc, self.http = grpc, http

    @property
    def grpc_address(self) -> str:
        return self.grpc.address

    @property
    def http_url(self) -> str:
        return self.http.url

    def stop(self) -> None:
        self.http.stop()
        self.grpc.stop(0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_status_servers(
    config: Any, board: StatusBoard, registry: CollectorRegistry | None = None
) -> StatusServers:
    """Serve `board` and the Prometheus registry on `config.trainer`'s host and ports. Raises
    ValueError naming the setting when a port is taken."""
    trainer = config.trainer

    def register(server: grpc.Server) -> None:
        trainer_pb2_grpc.add_TrainerStatusServiceServicer_to_server(
            TrainerStatusServicer(board), server
        )

    try:
        status = grpc_server.serve(
            register,
            [SERVICE_NAME],
            host=trainer.host,
            port=trainer.grpc_port,
            max_workers=MAX_WORKERS,
            registry=registry,
        )
    except OSError as exc:
        raise ValueError(
            f"the trainer's status port {trainer.host}:{trainer.grpc_port} is "
            f"taken ({exc}); set trainer.grpc_port to a free port (0 picks "
            "one)"
        ) from None
    app = create_app(
        "trainer", ready=lambda: board.snapshot().phase != "starting", registry=registry
    )
    try:
        http = serve_in_thread(app, host=trainer.host, port=trainer.http_port)
    except OSError as exc:
        status.stop(0)
        raise ValueError(
            f"the trainer's metrics port {trainer.host}:{trainer.http_port} is "
            f"taken ({exc}); set trainer.http_port to a free port (0 picks "
            "one)"
        ) from None
    return StatusServers(status, http)
