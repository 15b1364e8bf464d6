"""The `disk` weight transport: trainer weights -> versioned safetensors -> every vLLM server.

One sync of policy version v (`DiskTransport.sync`):

1. export (rank 0; every rank takes part in gathering the weights): `backend.hf_weights()` and
   the model's config.json go into `<run dir>/weights/.partial-v<v>` with a `manifest.json`
   (version, checksum of the tensors, bytes); the directory is then renamed to
   `<run dir>/weights/v<v:08d>`: a server never reads half a version.
2. reload, on every healthy server at once (agentrl.common.inference.control):
     POST /pause?mode=keep            in-flight requests freeze and keep their tokens
     POST /collective_rpc reload_weights(weights_path=DIR)
        vLLM's in-place reload re-reads checkpoint-format safetensors through the server's own
        loader and `model.load_weights`: name mapping, fusing and casting are vLLM's
     POST /reset_prefix_cache?reset_running_requests=true
        KV of the old weights is dropped; frozen requests re-prefill on the new weights
     POST /update_weight_version      tokens sampled from now carry v
     POST /resume                     always, also after a failure
3. verify: every server reports version v (`GET /weight_info`). The content is checked by the
   log-prob drift check the RL loop runs after every sync (drift_check.py): vLLM's reload
   does not read our manifest, so the served weights are compared, not the files.
4. prune: only the newest `keep_versions` directories stay (a server started meanwhile
   loads the newest).

A version is exported once: a second `sync(v, urls)` (a retry without a failed server, a
restarted server catching up) reloads the same directory on those servers only.

A failure before the reload leaves the servers untouched; a reload that fails on one server
raises with that server and phase, and the servers that did reload keep the new weights
under the OLD version label (the label is set only after every reload succeeded), so samples
from them are dropped as stale at worst, never mislabelled.

What this does NOT cover: servers that cannot read the run directory (it must be a shared
volume, e.g. the ReadWriteMany volume of the Kubernetes deployment).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from agentrl.common.inference import control
from agentrl.common.inference.pool import InferenceError, InferencePool
from agentrl.common.inference.weights_checksum import weights_checksum
from agentrl.trainer.backends.interface import TrainerBackend
from agentrl.trainer.transports.interface import SyncResult, WeightSyncError, WeightTransport
from agentrl.trainer.transports.swap import swap_weights

WEIGHTS_DIRNAME = "weights"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"


def version_dirname(version: int) -> str:
    return f"v{version:08d}"


def export_version(
    backend: TrainerBackend, weights_root: Path, version: int
) -> tuple[Path, str, int]:
    """Write `weights_root/v<version>` atomically (rank 0): its path, checksum and bytes.
    Every rank must call it (the weights are gathered collectively)."""
    from safetensors.torch import save_file

    if version < 0:
        raise ValueError(f"policy version must be >= 0, got {version}")
    weights = backend.hf_weights()
    final = weights_root / version_dirname(version)
    if not backend.is_main_process():
        return final, "", 0
    partial = weights_root / f".partial-{version_dirname(version)}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    backend.hf_config.to_json_file(partial / "config.json")
    save_file(
        {name: t.contiguous() for name, t in weights.items()},
        partial / WEIGHTS_FILE,
        metadata={"format": "pt"},
    )
    checksum = weights_checksum(weights)
    num_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    (partial / MANIFEST_FILE).write_text(
        json.dumps({"version": version, "checksum": checksum, "num_bytes": num_bytes})
    )
    if final.exists():  # the same version exported again (a resumed run): replace it
        shutil.rmtree(final)
    partial.rename(final)
    return final, checksum, num_bytes


class DiskTransport(WeightTransport):
    """Export, reload, verify and prune: see the module docstring."""

    name = "disk"

    def __init__(
        self,
        backend: TrainerBackend,
        pool: InferencePool,
        run_dir: str | Path,
        *,
        keep_versions: int = 2,
        pause_mode: str = "keep",
        reload_timeout_s: float = control.RELOAD_TIMEOUT_S,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        self.backend, self.pool = backend, pool
        self.weights_root = Path(run_dir) / WEIGHTS_DIRNAME
        self.keep_versions = keep_versions
        self.pause_mode = pause_mode
        self.reload_timeout_s = reload_timeout_s
        self.exported: tuple[int, Path, str, int] | None = None  # the last version written

    @classmethod
    def from_config(
        cls, config, backend: TrainerBackend, pool: InferencePool, run_dir: Path
    ) -> DiskTransport:
        return cls(backend, pool, run_dir, pause_mode=config.trainer.weight_sync_pause_mode)

    async def sync(self, version: int, urls: list[str] | None = None) -> SyncResult:
        start = time.perf_counter()
        if self.exported is None or self.exported[0] != version or not self.exported[1].is_dir():
            self.exported = (version, *export_version(self.backend, self.weights_root, version))
        _, directory, checksum, num_bytes = self.exported
        exported = time.perf_counter()
        phases = {"export_s": exported - start}
        if not self.backend.is_main_process():
            return SyncResult(
                version,
                num_bytes,
                checksum,
                str(directory),
                0.0,
                time.perf_counter() - start,
                phases,
            )
        try:
            pause_s = await self._reload(
                directory, version, phases, urls or control.healthy_urls(self.pool)
            )
        except InferenceError as exc:
            raise WeightSyncError(
                f"disk sync of version {version}: {exc}",
                getattr(exc, "url", None),
                getattr(exc, "phase", None),
            ) from exc
        self._prune()
        return SyncResult(
            version,
            num_bytes,
            checksum,
            str(directory.resolve()),
            pause_s,
            time.perf_counter() - start,
            phases,
        )

    async def _reload(
        self, directory: Path, version: int, phases: dict[str, float], urls: list[str]
    ) -> float:
        return await swap_weights(
            self.pool,
            urls,
            version,
            self.pause_mode,
            lambda: control.reload_weights(self.pool, directory, self.reload_timeout_s, urls),
            phases,
            load_phase="reload_s",
        )

    def _prune(self) -> None:
        versions = sorted(
            p
            for p in self.weights_root.iterdir()
            if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit()
        )
        for old in versions[: -self.keep_versions]:
            shutil.rmtree(old, ignore_errors=True)
