"""`search.workers: 2` for real: `agentrl serve search` supervising two worker processes on one
gRPC port and one HTTP port; both answer, metrics add up over them, SIGTERM stops them all,
and a worker that dies takes the replica down."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentrl.common.grpc_client import NO_RETRY, create_channel, create_spread_channel
from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.search.indexer import build_index
from agentrl.search.qa_questions import make_qa_world
from agentrl.search.workers import PID_HEADER

pytestmark = pytest.mark.slow

# Connections the kernel spreads over 2 workers: the chance that all land on one is 2 * 2^-24.
NUM_CONNECTIONS = 24


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search-workers")
    make_qa_world(out, seed=3, num_passages=800, num_questions=50)
    build_index(out / "corpus.jsonl", out / "index", dense=False, progress=False)
    return out / "index"


class Replica:
    def __init__(self, index_dir: Path):
        env = {
            **os.environ,
            "AGENTRL__SEARCH__GRPC_PORT": "0",
            "AGENTRL__SEARCH__HTTP_PORT": "0",
            "AGENTRL__SEARCH__INDEX_DIR": str(index_dir),
            "AGENTRL__SEARCH__WORKERS": "2",
            "AGENTRL__SEARCH__CACHE_SIZE": "0",
        }
        env.pop("AGENTRL_AUTH_TOKEN", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentrl.common.cli", "serve", "search"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = ""
        while "search service ready" not in line:
            assert self.process.poll() is None, "the supervisor exited before ready"
            line = self.process.stderr.readline()
        self.grpc = re.search(r"grpc=(\S+)", line).group(1)
        self.http = re.search(r"http=(\S+)", line).group(1)
        self.pids = {int(p) for p in re.findall(r"\d+", line.split("pids=")[1])}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: set[int]) -> None:
    # Workers are the supervisor's children: it reaps them before it exits.
    assert not [p for p in pids if alive(p)], f"workers {pids} still running"


@pytest.fixture
def replica(index_dir: Path) -> Iterator[Replica]:
    running = Replica(index_dir)
    yield running
    running.close()


def test_two_workers_share_both_ports_and_add_up_their_metrics(replica: Replica) -> None:
    assert len(replica.pids) == 2
    http_pids, grpc_pids = set(), set()
    for _ in range(NUM_CONNECTIONS):
        with httpx.Client(base_url=replica.http) as client:  # one connection each
            reply = client.post("/retrieve", json={"queries": ["river"], "topk": 2})
            assert reply.status_code == 200 and reply.json()["result"][0]
            http_pids.add(int(reply.headers[PID_HEADER]))
        # A channel of its own, not the process-wide subchannel shared by equal channels.
        with create_channel(
            replica.grpc,
            token=None,
            retry=NO_RETRY,
            options=[("grpc.use_local_subchannel_pool", 1)],
        ) as channel:
            response, call = search_pb2_grpc.SearchServiceStub(channel).Retrieve.with_call(
                search_pb2.RetrieveRequest(queries=["river"], top_k=2)
            )
            assert response.results[0].passages
            grpc_pids.update(int(v) for k, v in call.trailing_metadata() if k == PID_HEADER)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert http_pids == replica.pids and grpc_pids == replica.pids

    # What the rollout worker uses: one channel object, calls in turn over its connections.
    spread_pids = set()
    with create_spread_channel(replica.grpc, NUM_CONNECTIONS, token=None) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        for _ in range(NUM_CONNECTIONS):
            _, call = stub.Retrieve.with_call(search_pb2.RetrieveRequest(queries=["river"]))
            spread_pids.update(int(v) for k, v in call.trailing_metadata() if k == PID_HEADER)
    assert spread_pids == replica.pids

    # Whichever worker answers /metrics counts every worker's queries.
    text = httpx.get(f"{replica.http}/metrics").text
    answered = sum(
        float(m)
        for m in re.findall(r"^agentrl_search_queries_total\{[^}]*\} (\S+)", text, re.MULTILINE)
    )
    assert answered == 3 * NUM_CONNECTIONS
    gauges = set(
        re.findall(r'^agentrl_search_in_flight_requests\{pid="(\d+)"\}', text, re.MULTILINE)
    )
    assert {int(p) for p in gauges} == replica.pids
    assert httpx.get(f"{replica.http}/readyz").status_code == 200

    replica.process.send_signal(signal.SIGTERM)
    assert replica.process.wait(timeout=60) == 0
    wait_gone(replica.pids)


def test_a_dead_worker_stops_the_replica(replica: Replica) -> None:
    victim, other = sorted(replica.pids)
    os.kill(victim, signal.SIGKILL)
    assert replica.process.wait(timeout=60) == 1
    assert "stopping the others" in replica.process.stderr.read()
    wait_gone({other})
