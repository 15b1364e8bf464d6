"""The `disk` weight transport: trainer weights -> versioned safetensors -> every vLLM server.

One sync of policy version v (`DiskWeightSync.sync`):

1. export: `backend.export_weights` writes config.json + safetensors into
   `<run dir>/weights/.partial-v<v>`, a `manifest.json` (version, sha256, bytes) is added and the
   directory is renamed to `<run dir>/weights/v<v:08d>`: a reader never sees half a version.
2. verify: the safetensors are hashed again and compared with the export's sha256 (catches a
   torn write on a shared volume before any server loads it).
3. reload, on every healthy server of the pool, with vLLM 0.32.0's dev-mode routes
   (`VLLM_SERVER_DEV_MODE=1`):
     POST /pause?mode=keep                      in-flight requests freeze, keep their tokens
     POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": DIR}}
        -> Worker.reload_weights -> model_runner.reload_weights(weights_path=DIR): vLLM's
           in-place reload (model_loader/reload/inplace.py) re-reads checkpoint-format
           safetensors from DIR through the server's own loader and `model.load_weights`,
           so name mapping, fusing (qkv, gate_up) and dtype casting are vLLM's, not ours.
     POST /reset_prefix_cache?reset_running_requests=true
        -> KV computed with the old weights is dropped; frozen requests are preempted and
           re-prefill on the new weights (AReaL's interruptible rollout), each token keeping
           the version that sampled it.
     POST /update_weight_version {"new_version": "v"}   tokens sampled from now carry v
     POST /resume                               (also after a failure: never leave it paused)
   Why not `/start_weight_update` + `/update_weights`: those drive a weight-transfer engine
   (nccl, ipc, ...) that must be configured at server start and has no disk engine in 0.32.0;
   `reload_weights` needs nothing but the path, works on CPU, and is what `disk` means.
4. publish: Redis `SET agentrl:{run_id}:policy_version v` and a `PolicyVersionEvent` on the
   pub/sub channel `agentrl:{run_id}:events` (weights_uri = DIR, checksum = sha256).
5. prune: only the newest `keep_versions` directories stay (the servers hold the weights in
   memory; older directories are only needed by a server started meanwhile).

Seconds per phase come back in `SyncResult` (the driver logs `time_weight_sync_s`).
`check_logprob_drift` is the optional check after a sync: vLLM's log-probs of a fixed sequence
(`InferencePool.score`) against the trainer's, raising `WeightDriftError` above a threshold.

What this does NOT cover: the `nccl` transport (GPU, vLLM's weight-transfer engine), servers
that cannot read the run directory (it must be a shared volume), and FSDP2 ranks other than 0
(rank 0 alone exports and talks to the pool).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentrl.rollout.inference_client import InferenceError, InferencePool
from agentrl.trainer.interface import TrainerBackend, WeightExport

WEIGHTS_DIRNAME = "weights"
MANIFEST_FILE = "manifest.json"
# Reloading re-reads every tensor from disk: seconds for the tiny model, about a minute for a
# few GB on a slow shared volume; control calls get this long before the sync fails.
RELOAD_TIMEOUT_S = 600.0
# Drift alarm default: float32 on both sides agrees to ~1e-6 per token (docs/rollout.md);
# bf16 serving against fp32 training differs by ~1e-2, so such setups raise the threshold.
DEFAULT_DRIFT_THRESHOLD = 1e-3


class WeightSyncError(RuntimeError):
    """A sync step failed (checksum mismatch, a server refused the reload)."""


class WeightDriftError(RuntimeError):
    """vLLM's log-probs differ from the trainer's beyond the threshold after a sync."""


@dataclass(frozen=True)
class SyncResult:
    """What one sync did and how long each phase took."""

    version: int
    directory: Path
    sha256: str
    num_bytes: int
    export_s: float
    verify_s: float
    reload_s: float
    """Pause, reload, cache reset, version label and resume, over every server."""
    total_s: float


def version_dirname(version: int) -> str:
    return f"v{version:08d}"


def safetensors_sha256(directory: Path) -> tuple[str, int]:
    """sha256 over the directory's safetensors files in name order, and their size in bytes
    (the same digest as `TorchBackend.export_weights`)."""
    digest, num_bytes = hashlib.sha256(), 0
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):  # 1 MiB reads keep memory flat
                digest.update(chunk)
                num_bytes += len(chunk)
    return digest.hexdigest(), num_bytes


def export_version(backend: TrainerBackend, weights_root: Path, version: int) -> WeightExport:
    """Export `backend`'s weights as `weights_root/v<version>` atomically, with a manifest."""
    if version < 0:
        raise ValueError(f"policy version must be >= 0, got {version}")
    final = weights_root / version_dirname(version)
    partial = weights_root / f".partial-{version_dirname(version)}"
    shutil.rmtree(partial, ignore_errors=True)
    export = backend.export_weights(partial)
    (partial / MANIFEST_FILE).write_text(json.dumps(
        {"version": version, "sha256": export.sha256, "num_bytes": export.num_bytes}))
    if final.exists():  # the same version exported again (a resumed run): replace it
        shutil.rmtree(final)
    partial.rename(final)
    return WeightExport(directory=final, num_bytes=export.num_bytes, sha256=export.sha256)


class PolicyVersionPublisher:
    """Publishes the current policy version of a run in Redis (key + pub/sub event)."""

    def __init__(self, redis_url: str, run_id: str) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        from agentrl.common.streams import KEY_PREFIX

        # A network boundary: a few bounded retries ride through a reconnect.
        self.client = redis.Redis.from_url(redis_url, socket_timeout=10.0,
                                           retry=Retry(ExponentialBackoff(cap=2.0), 3))
        self.version_key = f"{KEY_PREFIX}:{run_id}:policy_version"
        self.events_channel = f"{KEY_PREFIX}:{run_id}:events"

    def publish(self, version: int, weights_uri: str, checksum: str) -> None:
        from agentrl.proto.core.v1 import events_pb2

        event = events_pb2.PolicyVersionEvent(version=version, weights_uri=weights_uri,
                                              checksum=checksum, published_at_unix_s=time.time())
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.version_key, str(version))
        pipe.publish(self.events_channel, event.SerializeToString())
        pipe.execute()

    def latest(self) -> int | None:
        value = self.client.get(self.version_key)
        return None if value is None else int(value)

    def close(self) -> None:
        self.client.close()


async def _post_all(pool: InferencePool, path: str, **kwargs: Any) -> dict[str, Any]:
    """POST `path` to every healthy server of the pool, one after another; replies by URL."""
    replies = {}
    for url, server in pool.servers.items():
        if not server.healthy:
            continue
        try:
            response = await pool.http.post(url + path, timeout=RELOAD_TIMEOUT_S, **kwargs)
        except httpx.HTTPError as exc:
            raise WeightSyncError(f"POST {url}{path} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise WeightSyncError(f"POST {url}{path}: HTTP {response.status_code} "
                                  f"{response.text[:300]} (is VLLM_SERVER_DEV_MODE=1 set?)")
        replies[url] = response.json() if response.content else None
    if not replies:
        raise WeightSyncError(f"no healthy vLLM server among {list(pool.servers)} to sync")
    return replies


async def reload_pool(pool: InferencePool, directory: Path, version: int,
                      pause_mode: str = "keep") -> None:
    """Pause every server, reload weights from `directory`, label `version`, resume."""
    await pool.pause(pause_mode)
    try:
        await _post_all(pool, "/collective_rpc", json={
            "method": "reload_weights", "kwargs": {"weights_path": str(directory.resolve())},
            "timeout": RELOAD_TIMEOUT_S})
        replies = await _post_all(pool, "/reset_prefix_cache",
                                  params={"reset_running_requests": "true"})
        failed = [url for url, reply in replies.items() if not (reply or {}).get("success")]
        if failed:
            raise WeightSyncError(f"{failed}: the prefix cache still holds KV of the old weights")
        await pool.set_weight_version(version)
    finally:
        await pool.resume()


class DiskWeightSync:
    """Export, verify, reload, publish and prune: see the module docstring."""

    def __init__(self, backend: TrainerBackend, pool: InferencePool, run_dir: str | Path, *,
                 publisher: PolicyVersionPublisher | None = None, keep_versions: int = 2,
                 pause_mode: str = "keep", verify_checksum: bool = True) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        self.backend, self.pool, self.publisher = backend, pool, publisher
        self.weights_root = Path(run_dir) / WEIGHTS_DIRNAME
        self.keep_versions = keep_versions
        self.pause_mode = pause_mode
        self.verify_checksum = verify_checksum

    async def sync(self, version: int) -> SyncResult:
        start = time.perf_counter()
        export = export_version(self.backend, self.weights_root, version)
        exported = time.perf_counter()
        if self.verify_checksum:
            sha256, _ = safetensors_sha256(export.directory)
            if sha256 != export.sha256:
                raise WeightSyncError(f"{export.directory}: sha256 {sha256} on disk differs from "
                                      f"the export's {export.sha256}; the write was torn")
        verified = time.perf_counter()
        try:
            await reload_pool(self.pool, export.directory, version, self.pause_mode)
        except InferenceError as exc:
            raise WeightSyncError(f"reloading version {version}: {exc}") from exc
        reloaded = time.perf_counter()
        if self.publisher is not None:
            self.publisher.publish(version, str(export.directory.resolve()), export.sha256)
        self._prune()
        return SyncResult(version=version, directory=export.directory, sha256=export.sha256,
                          num_bytes=export.num_bytes, export_s=exported - start,
                          verify_s=verified - exported, reload_s=reloaded - verified,
                          total_s=time.perf_counter() - start)

    def _prune(self) -> None:
        versions = sorted(p for p in self.weights_root.iterdir()
                          if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit())
        for old in versions[:-self.keep_versions]:
            shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class DriftReport:
    max_abs_diff: float
    mean_abs_diff: float
    num_tokens: int


async def check_logprob_drift(backend: TrainerBackend, pool: InferencePool,
                              token_ids: list[int],
                              threshold: float = DEFAULT_DRIFT_THRESHOLD) -> DriftReport:
    """Compare vLLM's and the trainer's log-probs of `token_ids`; WeightDriftError above
    `threshold` (max absolute difference over the tokens after the first)."""
    from agentrl.trainer.packing import pack_micro_batches

    if len(token_ids) < 2:
        raise ValueError("the drift check needs a sequence of at least 2 tokens")
    served = await pool.score(list(token_ids))
    ((trained, _entropy),) = backend.logprobs(pack_micro_batches([token_ids], len(token_ids)))
    diffs = [abs(float(s) - float(t)) for s, t in zip(served[1:], trained[0, 1:].tolist(),
                                                         strict=True)]
    report = DriftReport(max(diffs), sum(diffs) / len(diffs), len(diffs))
    if report.max_abs_diff > threshold:
        raise WeightDriftError(
            f"vLLM and trainer log-probs differ by up to {report.max_abs_diff:.2e} (mean "
            f"{report.mean_abs_diff:.2e}) over {report.num_tokens} tokens, above {threshold:.0e}: "
            "the served weights are not the trained ones (stale reload, dtype mismatch?)")
    return report
