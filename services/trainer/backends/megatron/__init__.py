"""The `megatron` backend: a megatron-core GPTModel trained behind the same interface as the
torch backend, with Hugging Face checkpoints converted in and out (convert.py), the model and
its forward (model.py), the CPU accommodations (cpu.py), the pipeline schedule (pipeline.py)
and the verbs (backend.py). `build` is what `create_backend` calls; megatron-core is imported
only then (`pip install agentrl[megatron]`)."""

from __future__ import annotations

from typing import Any

from agentrl.trainer.backends.interface import OptimizerSettings


def build(config: Any, optimizer: OptimizerSettings, model_path: Any):
    """A `MegatronBackend` from a recipe's `model` and `trainer` sections."""
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        raise ValueError(
            "trainer.backend 'megatron' needs megatron-core: pip install 'agentrl[megatron]' "
            "(megatron-core==0.16.1 on Python 3.11)"
        ) from None
    import torch

    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import ParallelLayout

    trainer = config.trainer
    if trainer.cpu_threads:
        torch.set_num_threads(trainer.cpu_threads)
    settings = trainer.megatron
    return MegatronBackend(
        model_path,
        optimizer,
        layout=ParallelLayout(
            tp=settings.tensor_parallel_size,
            pp=settings.pipeline_parallel_size,
            vocab_multiple=settings.vocab_padding_multiple,
        ),
        dtype=config.model.dtype if config.model is not None else "float32",
        recompute=settings.recompute,
        distributed_optimizer=settings.distributed_optimizer,
    )
