"""The trainer's status and metrics servers (status_server.py), served for real on free ports:
GetStatus over gRPC answers the board's latest state, /metrics exposes the step gauges to a
Prometheus scrape, /readyz turns ready once the run is past starting, and a taken port is
refused naming the setting to change. The RL loop's use of them: test_trainer_vllm.py."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from agentrl.common.config import AgentRLConfig, TrainerConfig
from agentrl.common.grpc_client import create_channel
from agentrl.proto.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from agentrl.trainer.metrics import StepMetricsWriter
from agentrl.trainer.status_server import StatusBoard, start_status_servers


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def config(grpc_port: int = 0, http_port: int = 0) -> AgentRLConfig:
    return AgentRLConfig(trainer=TrainerConfig(grpc_port=grpc_port, http_port=http_port))


def test_status_and_metrics_are_served_while_the_loop_updates_them(tmp_path) -> None:
    registry = CollectorRegistry()
    board = StatusBoard("status-test")
    with (
        start_status_servers(config(), board, registry=registry) as servers,
        create_channel(servers.grpc_address, token=None) as channel,
    ):
        stub = trainer_pb2_grpc.TrainerStatusServiceStub(channel)
        request = trainer_pb2.GetTrainerStatusRequest()
        assert stub.GetStatus(request, timeout=10).phase == "starting"
        assert get(f"{servers.http_url}/readyz")[0] == 503
        assert get(f"{servers.http_url}/healthz")[0] == 200

        board.set_position(step=4, policy_version=4)  # a resumed run
        board.set_phase("training")
        with StepMetricsWriter(tmp_path, registry=registry) as writer:
            for step, kept in ((5, 0.5), (6, 1.0)):
                board.record_step(
                    writer.write(
                        step,
                        {
                            "reward_mean": 0.25 * step,
                            "num_samples": 16,
                            "num_groups": 4,
                            "kept_group_ratio": kept,
                            "samples_dropped_stale": 1,
                            "policy_version": step,
                            "prompts_admitted": 8 * step,
                        },
                    )
                )
        status = stub.GetStatus(request, timeout=10)
        assert (status.run_id, status.phase, status.step, status.policy_version) == (
            "status-test",
            "training",
            6,
            6,
        )
        assert (
            status.samples_consumed,
            status.groups_dropped_zero_signal,
            status.samples_dropped_stale,
            status.prompts_admitted,
        ) == (32, 2, 2, 48)
        assert status.last_metrics["reward_mean"] == pytest.approx(1.5)
        assert get(f"{servers.http_url}/readyz")[0] == 200

        code, body = get(f"{servers.http_url}/metrics")
        assert code == 200
        assert "agentrl_trainer_step_index 6.0" in body
        assert 'agentrl_trainer_step_metric_value{metric="reward_mean"} 1.5' in body
        # The status call itself is counted like every gRPC call of every service.
        assert "agentrl.trainer.v1.TrainerStatusService" in body

        board.set_phase("done")
        assert stub.GetStatus(request, timeout=10).phase == "done"
        with pytest.raises(ValueError, match="unknown phase"):
            board.set_phase("napping")


def test_a_resumed_run_counts_from_its_records_once_each() -> None:
    board = StatusBoard("resumed")
    # metrics.jsonl of a run killed after step 3's record but before its checkpoint, resumed
    # from step 2, killed again after redoing step 3, and now resumed from step 3.
    history = [
        {"step": 1, "num_samples": 8},
        {"step": 2, "num_samples": 8},
        {"step": 3, "num_samples": 8},
        {"step": 3, "num_samples": 6},
        {"step": 4, "num_samples": 8},
    ]
    board.set_position(step=3, policy_version=3, history=history)
    status = board.snapshot()
    assert (status.step, status.policy_version, status.samples_consumed) == (3, 3, 22)
    assert status.phase == "starting"


@pytest.mark.parametrize("which", ["grpc_port", "http_port"])
def test_a_taken_port_is_refused_naming_the_setting(which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"set trainer.{which} to a free port"):
            start_status_servers(
                config(**{which: port}), StatusBoard("x"), registry=CollectorRegistry()
            )
