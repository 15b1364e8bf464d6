"""What megatron-core 0.16 needs to run on CPU (gloo), in one place; a GPU run needs none of it.

megatron-core is written for CUDA. Three accommodations make its local (non-Transformer-Engine)
GPTModel run forward and backward on CPU processes joined by gloo:

1. `torch.cuda.current_device()` answers "cpu": megatron-core calls it in ~30 places to place
   new tensors (RoPE's inverse frequencies move there on first use, the tensor-parallel layers
   allocate gather buffers there). `enable()` replaces that one function, process-wide, and
   only in a process without CUDA.
2. The RNG tracker is megatron's inference tracker (`fork()` is a no-op): the training tracker
   stores and restores CUDA RNG states. Dropout is 0 in every model built here, so no random
   numbers are drawn inside the model anyway.
3. The causal attention mask is always given explicitly (the backend builds a block-diagonal
   one per packed micro-batch); megatron's default mask is created with device="cuda".

Plus, in the TransformerConfig (model.py): `use_cpu_initialization` and every fused kernel off.
What is NOT covered: Transformer Engine, fused or flash attention, the distributed optimizer's
CUDA buffers; on CPU only the local layer spec runs.
"""

from __future__ import annotations

import torch

_ENABLED = False


def enable() -> None:
    """Apply accommodation 1 (idempotent; nothing changes where CUDA is available)."""
    global _ENABLED
    if _ENABLED or torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    _ENABLED = True


def init_rng_tracker() -> None:
    """Accommodation 2: the CPU-safe RNG tracker (call after the model-parallel groups exist)."""
    from megatron.core.tensor_parallel import random

    if torch.cuda.is_available():
        random.model_parallel_cuda_manual_seed(1234)
    else:
        random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
