"""Parallelism of the torch backend, all in one place; the model code stays single-device.

`single`: the whole model on one device; state dicts are the module's own.
`fsdp2`: torch's `fully_shard` on every decoder layer and then the root (FSDP2, per-parameter
DTensor sharding over all ranks of the initialised default process group), with a mixed-precision
policy (compute in the model dtype, gradients reduced in float32). State dicts are gathered to
full, CPU tensors with torch.distributed.checkpoint's helpers, so checkpoints and weight exports
look the same whatever the parallelism.

What is NOT covered here: launching the processes (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and
the caller runs `torch.distributed.init_process_group`), tensor/pipeline parallelism (the
Megatron backend's job), and CPU offload. FSDP2 is exercised only where several GPUs exist;
unit tests check the error when no process group is initialised.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

Parallelism = Literal["single", "fsdp2"]


def distributed_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def fsdp2_device() -> torch.device:
    """This rank's GPU (LOCAL_RANK, as torchrun sets it)."""
    if not distributed_ready():
        raise RuntimeError(
            "trainer.parallelism 'fsdp2' needs an initialised torch.distributed process group: "
            "launch the trainer with torchrun (e.g. `torchrun --nproc-per-node 8 ...`), which "
            "calls init_process_group before the backend is built; on one device use 'single'")
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.parallelism 'fsdp2' shards over GPUs; none is visible here")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def apply_fsdp2(model: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Shard `model` (a Hugging Face causal LM with `model.model.layers`) in place."""
    fsdp2_device()  # raises the explanatory error when there is no process group
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers to shard; FSDP2 here "
                         "supports Hugging Face decoder-only causal LMs")
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def model_state_dict(model: torch.nn.Module, parallelism: Parallelism) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters and buffers on CPU."""
    if parallelism == "single":
        return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def load_model_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor],
                          parallelism: Parallelism) -> None:
    if parallelism == "single":
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         parallelism: Parallelism) -> dict[str, Any]:
    if parallelism == "single":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any], parallelism: Parallelism) -> None:
    if parallelism == "single":
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(values: list[int], parallelism: Parallelism, device: torch.device) -> list[int]:
    """`values` summed over ranks (unchanged on one device)."""
    if parallelism == "single":
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def is_main_process(parallelism: Parallelism) -> bool:
    """Rank 0 writes files (exports, checkpoints); every rank takes part in gathering."""
    if parallelism == "single":
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0
