"""The `torch` backend: a Hugging Face causal LM, single device or FSDP2 (backend.py,
parallelize.py). `build` is what `create_backend` calls."""

from __future__ import annotations

from typing import Any

from agentrl.trainer.backends.interface import OptimizerSettings


def build(config: Any, optimizer: OptimizerSettings, model_path: Any):
    """A `TorchBackend` from a recipe's `model` and `trainer` sections."""
    import torch

    from agentrl.trainer.backends.torch.backend import TorchBackend

    trainer = config.trainer
    if trainer.cpu_threads:
        # Process-wide: intra-op threads of every torch op in this process.
        torch.set_num_threads(trainer.cpu_threads)
    dtype = config.model.dtype if config.model is not None else "float32"
    return TorchBackend(
        model_path,
        optimizer,
        device=trainer.device,
        dtype=dtype,
        parallelism=trainer.parallelism,
        gradient_checkpointing=trainer.gradient_checkpointing,
        packed_attention=trainer.packed_attention,
    )
