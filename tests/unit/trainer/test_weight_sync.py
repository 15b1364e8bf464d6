"""The disk weight transport's control sequence against a recording fake of the vLLM routes
(httpx.MockTransport): the call order, that a failed reload still resumes the servers, and the
versioned export directories (manifest, checksum, pruning). The real server: tests/integration/
test_trainer_vllm.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from agentrl.rollout.inference_client import InferencePool
from agentrl.trainer.interface import OptimizerSettings
from agentrl.trainer.weight_sync import (
    MANIFEST_FILE,
    DiskWeightSync,
    WeightSyncError,
    reload_pool,
    safetensors_sha256,
)

URL = "http://vllm.test"


def recording_pool(fail_path: str | None = None) -> tuple[InferencePool, list[str]]:
    calls: list[str] = []

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
        return httpx.Response(200, json={})

    return InferencePool([URL], transport=httpx.MockTransport(handle)), calls


def test_reload_sequence_pauses_reloads_resets_labels_and_resumes(tmp_path) -> None:
    pool, calls = recording_pool()
    asyncio.run(reload_pool(pool, tmp_path, version=4))
    assert calls == ["/pause", "/collective_rpc", "/reset_prefix_cache",
                     "/update_weight_version", "/resume"]


def test_a_failed_reload_raises_and_still_resumes(tmp_path) -> None:
    pool, calls = recording_pool(fail_path="/collective_rpc")
    with pytest.raises(WeightSyncError, match="HTTP 500"):
        asyncio.run(reload_pool(pool, tmp_path, version=4))
    assert calls == ["/pause", "/collective_rpc", "/resume"]


def test_sync_writes_versioned_checksummed_directories_and_prunes(tiny_checkpoint,
                                                                  tmp_path) -> None:
    from agentrl.trainer.torch_backend import TorchBackend

    backend = TorchBackend(tiny_checkpoint, OptimizerSettings(learning_rate=1e-3), device="cpu")
    pool, calls = recording_pool()
    sync = DiskWeightSync(backend, pool, tmp_path, keep_versions=2)
    results = [asyncio.run(sync.sync(v)) for v in (1, 2, 3)]
    weights = tmp_path / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["v00000002", "v00000003"]
    manifest = json.loads((weights / "v00000003" / MANIFEST_FILE).read_text())
    assert manifest == {"version": 3, "sha256": results[-1].sha256,
                        "num_bytes": results[-1].num_bytes}
    assert safetensors_sha256(weights / "v00000003") == (results[-1].sha256,
                                                         results[-1].num_bytes)
    assert all(r.total_s >= r.export_s + r.reload_s for r in results)
    assert calls.count("/collective_rpc") == 3
    with pytest.raises(ValueError, match="keep_versions must be >= 1"):
        DiskWeightSync(backend, pool, tmp_path, keep_versions=0)
