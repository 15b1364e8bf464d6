"""The disk weight transport's control sequence against a recording fake of the vLLM routes
(httpx.MockTransport): the call order, that a failed reload still resumes the servers and names
the server and phase, the version read back, and the versioned export directories (manifest,
checksum of the tensors, pruning). The real server: tests/integration/test_weight_transport.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from safetensors.torch import load_file

from agentrl.common.inference.pool import InferencePool
from agentrl.common.inference.weights_checksum import weights_checksum
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.transports.disk import MANIFEST_FILE, WEIGHTS_FILE, DiskTransport
from agentrl.trainer.transports.interface import WeightSyncError

URL = "http://vllm.test"


def recording_pool(
    fail_path: str | None = None, reported_version: str | None = None
) -> tuple[InferencePool, list[str]]:
    calls: list[str] = []
    labels = {"version": "default"}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append(path)
        if path == fail_path:
            return httpx.Response(500, text="boom")
        if path == "/collective_rpc":
            body = json.loads(request.content)
            assert body["method"] == "reload_weights" and "weights_path" in body["kwargs"]
            return httpx.Response(200, json={"results": [None]})
        if path == "/reset_prefix_cache":
            assert request.url.params["reset_running_requests"] == "true"
            return httpx.Response(200, json={"success": True})
        if path == "/update_weight_version":
            labels["version"] = json.loads(request.content)["new_version"]
        if path == "/weight_info":
            return httpx.Response(
                200, json={"weight_version": reported_version or labels["version"]}
            )
        return httpx.Response(200, json={})

    return InferencePool([URL], transport=httpx.MockTransport(handle)), calls


@pytest.fixture
def backend(tiny_checkpoint):
    from agentrl.trainer.backends.torch.backend import TorchBackend

    return TorchBackend(tiny_checkpoint, OptimizerSettings(learning_rate=1e-3), device="cpu")


def test_sync_pauses_reloads_resets_labels_resumes_and_reads_the_version_back(
    backend, tmp_path
) -> None:
    pool, calls = recording_pool()
    result = asyncio.run(DiskTransport(backend, pool, tmp_path).sync(4))
    assert calls == [
        "/pause",
        "/collective_rpc",
        "/reset_prefix_cache",
        "/update_weight_version",
        "/resume",
        "/weight_info",
    ]
    assert list(result.phases_s) == ["export_s", "reload_s", "reset_and_label_s", "verify_s"]
    assert 0 < result.pause_s < result.total_s


def test_a_failed_reload_names_server_and_phase_and_still_resumes(backend, tmp_path) -> None:
    pool, calls = recording_pool(fail_path="/collective_rpc")
    with pytest.raises(WeightSyncError, match=r"reload_weights on http://vllm.test: HTTP 500"):
        asyncio.run(DiskTransport(backend, pool, tmp_path).sync(4))
    assert calls == ["/pause", "/collective_rpc", "/resume"]


def test_a_server_that_does_not_report_the_new_version_fails_the_sync(backend, tmp_path) -> None:
    pool, _ = recording_pool(reported_version="3")
    with pytest.raises(WeightSyncError, match="servers report .*'http://vllm.test': 3"):
        asyncio.run(DiskTransport(backend, pool, tmp_path).sync(4))


def test_sync_writes_versioned_checksummed_directories_and_prunes(backend, tmp_path) -> None:
    pool, calls = recording_pool()
    transport = DiskTransport(backend, pool, tmp_path, keep_versions=2)
    results = [asyncio.run(transport.sync(v)) for v in (1, 2, 3)]
    weights = tmp_path / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["v00000002", "v00000003"]
    manifest = json.loads((weights / "v00000003" / MANIFEST_FILE).read_text())
    assert manifest == {
        "version": 3,
        "checksum": results[-1].checksum,
        "num_bytes": results[-1].num_bytes,
    }
    # The checksum is of the tensors, so a reader can check what it loaded, not what was written.
    written = load_file(weights / "v00000003" / WEIGHTS_FILE)
    assert (
        weights_checksum(written) == results[-1].checksum == weights_checksum(backend.hf_weights())
    )
    assert results[-1].weights_uri == str((weights / "v00000003").resolve())
    assert calls.count("/collective_rpc") == 3
    with pytest.raises(ValueError, match="keep_versions must be >= 1"):
        DiskTransport(backend, pool, tmp_path, keep_versions=0)
