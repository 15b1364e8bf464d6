"""The version contract (pool_weights.py) with the real disk transport against two recorded
vLLM stand-ins (httpx.MockTransport): a server failing a sync is ejected and the other still
gets the version, from the one export; a server that comes back reporting another version is
synced alone before the next step. The real servers: tests/integration/test_weight_transport.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from agentrl.common.inference.pool import InferencePool
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.pool_weights import PoolWeights
from agentrl.trainer.transports.disk import DiskTransport
from agentrl.trainer.transports.interface import WeightSyncError

A, B = "http://vllm-a.test", "http://vllm-b.test"


class StandIns:
    """Two servers' control routes: their labels, the calls each got, and which ones fail."""

    def __init__(self) -> None:
        self.labels = {A: "default", B: "default"}
        self.calls: dict[str, list[str]] = {A: [], B: []}
        self.down: set[str] = set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = f"{request.url.scheme}://{request.url.host}"
        path = request.url.path
        if url in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.calls[url].append(path)
        if path == "/update_weight_version":
            self.labels[url] = json.loads(request.content)["new_version"]
        if path == "/weight_info":
            return httpx.Response(200, json={"weight_version": self.labels[url]})
        if path == "/reset_prefix_cache":
            return httpx.Response(200, json={"success": True})
        return httpx.Response(200, json={})

    def pool(self) -> InferencePool:
        return InferencePool([A, B], transport=httpx.MockTransport(self.handle))


@pytest.fixture
def backend(tiny_checkpoint):
    from agentrl.trainer.backends.torch.backend import TorchBackend

    return TorchBackend(tiny_checkpoint, OptimizerSettings(learning_rate=1e-3), device="cpu")


def test_a_server_failing_the_sync_is_ejected_and_the_other_still_gets_the_version(
    backend, tmp_path
) -> None:
    stand_ins = StandIns()
    pool = stand_ins.pool()
    weights = PoolWeights(DiskTransport(backend, pool, tmp_path), pool)
    stand_ins.down.add(B)
    result = asyncio.run(weights.push(1))
    assert result.version == 1 and stand_ins.labels == {A: "1", B: "default"}
    assert not pool.servers[B].healthy and weights.num_ejected == 1
    # One export for both attempts: the retry reloaded the same directory.
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["v00000001"]
    assert stand_ins.calls[A].count("/collective_rpc") == 1


def test_no_server_left_is_an_error_naming_the_last_one(backend, tmp_path) -> None:
    stand_ins = StandIns()
    pool = stand_ins.pool()
    weights = PoolWeights(DiskTransport(backend, pool, tmp_path), pool)
    stand_ins.down.update({A, B})
    with pytest.raises(WeightSyncError, match="no server left to serve version 1") as failure:
        asyncio.run(weights.push(1))
    assert failure.value.url in (A, B) and failure.value.phase == "pause"
    assert "inference.urls" in str(failure.value) and "agentrl up" in str(failure.value)


def test_a_server_that_comes_back_is_synced_alone_before_the_next_step(backend, tmp_path) -> None:
    stand_ins = StandIns()
    pool = stand_ins.pool()
    weights = PoolWeights(DiskTransport(backend, pool, tmp_path), pool)
    asyncio.run(weights.push(1))
    assert asyncio.run(weights.catch_up(1)) == []  # both serve version 1: nothing to do
    # B restarts: it serves its checkpoint again, labelled "default" (version 0).
    stand_ins.labels[B] = "default"
    stand_ins.calls = {A: [], B: []}
    assert asyncio.run(weights.catch_up(1)) == [B]
    assert stand_ins.labels == {A: "1", B: "1"} and weights.num_caught_up == 1
    assert "/collective_rpc" in stand_ins.calls[B]
    assert "/pause" not in stand_ins.calls[A]  # A kept generating


def test_an_ejected_server_is_readmitted_by_its_probe_and_caught_up(backend, tmp_path) -> None:
    stand_ins = StandIns()
    pool = stand_ins.pool()
    weights = PoolWeights(DiskTransport(backend, pool, tmp_path), pool)
    stand_ins.down.add(B)
    asyncio.run(weights.push(1))
    assert asyncio.run(weights.catch_up(1)) == []  # still down: stays out
    stand_ins.down.clear()
    assert asyncio.run(weights.catch_up(1)) == [B]
    assert pool.servers[B].healthy and stand_ins.labels[B] == "1"


def test_a_pool_of_one_restarting_is_waited_for_then_synced(backend, tmp_path) -> None:
    """No server left but within inference.reconnect_deadline_s: the sync waits (probing the
    pool with the shared backoff) for the restarted server, then gives it the version."""
    stand_ins = StandIns()
    refused = []

    def handle(request: httpx.Request) -> httpx.Response:
        if f"{request.url.scheme}://{request.url.host}" == A and A in stand_ins.down:
            refused.append(request.url.path)
            if len(refused) >= 4:  # back after a few refused requests: a restart
                stand_ins.down.discard(A)
        return stand_ins.handle(request)

    pool = InferencePool([A], transport=httpx.MockTransport(handle), reconnect_deadline_s=30.0)
    weights = PoolWeights(DiskTransport(backend, pool, tmp_path), pool)
    stand_ins.down.add(A)
    result = asyncio.run(weights.push(1))
    assert result.version == 1 and stand_ins.labels[A] == "1"
    assert pool.servers[A].healthy and weights.num_ejected == 1
    assert "/health" in refused  # it was probed while down


def test_a_pool_whose_last_server_went_down_before_the_sync_waits_for_it(backend, tmp_path):
    """The health checks marked the only server down before the sync began (it was SIGKILLed
    between two steps): the sync waits for it as after a failed sync, instead of ending the
    run with "no healthy vLLM server" (the fault suite met this under load)."""
    stand_ins = StandIns()
    refused = []

    def handle(request: httpx.Request) -> httpx.Response:
        if A in stand_ins.down:
            refused.append(request.url.path)
            if len(refused) >= 3:
                stand_ins.down.discard(A)
        return stand_ins.handle(request)

    pool = InferencePool([A], transport=httpx.MockTransport(handle), reconnect_deadline_s=30.0)
    weights = PoolWeights(DiskTransport(backend, pool, tmp_path), pool)
    stand_ins.down.add(A)
    asyncio.run(pool.check_health())
    assert not pool.servers[A].healthy
    result = asyncio.run(weights.push(1))
    assert result.version == 1 and stand_ins.labels[A] == "1" and pool.servers[A].healthy
