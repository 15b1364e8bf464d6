"""Weight transports: how the trainer's weights reach every vLLM server of the pool.

    transport = create_transport(config, backend, pool)
    result = await transport.sync(version)          # SyncResult: phases, pause window, total

`interface.py` is the contract; one module per transport beside it, named in `TRANSPORTS` and
chosen by `trainer.weight_transport`:
- `disk` (disk.py): safetensors into `<run dir>/weights/v<N>` on a volume every server reads,
  then vLLM's in-place reload (dev-mode `/collective_rpc reload_weights`);
- `vllm` (vllm_native.py): vLLM's native four-phase weight-transfer API on a stock `vllm
  serve` (`/init_weight_transfer_engine`, `/start_weight_update`, `/update_weights`,
  `/finish_weight_update`, with a keep-mode pause around it): the NCCL engine on GPU nodes, the
  gloo engine (agentrl.common.inference.gloo_weight_transfer) on CPU.
A new transport adds a module, a line here and its name to `TrainerConfig.weight_transport`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from agentrl.trainer.transports.interface import SyncResult, WeightSyncError, WeightTransport

# `trainer.weight_transport` -> module:class; each class takes (config, backend, pool, run_dir).
TRANSPORTS: dict[str, str] = {
    "disk": "agentrl.trainer.transports.disk:DiskTransport.from_config",
    "vllm": "agentrl.trainer.transports.vllm_native:NativeTransport.from_config",
}

__all__ = ["TRANSPORTS", "SyncResult", "WeightSyncError", "WeightTransport", "create_transport"]


def create_transport(
    config: Any, backend: Any, pool: Any, run_dir: str | Path | None = None
) -> WeightTransport:
    """The transport `config.trainer.weight_transport` from `backend` to `pool`."""
    kind = config.trainer.weight_transport
    if kind not in TRANSPORTS:
        raise ValueError(
            f"trainer.weight_transport {kind!r} is not built; choose one of {', '.join(TRANSPORTS)}"
        )
    module, _, attribute = TRANSPORTS[kind].partition(":")
    target: Any = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target(config, backend, pool, Path(run_dir or config.run.output_dir))
