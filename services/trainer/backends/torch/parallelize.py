"""Parallelism of the torch backend, all in one place; the model code stays single-device.

`single`: the whole model on one device, in one process.
`fsdp2`: data parallel over every rank of the initialised default process group, with torch's
`fully_shard` on every decoder layer and then the root (FSDP2: per-parameter DTensor sharding
of weights, gradients and AdamW state), on GPUs (NCCL, one per rank: LOCAL_RANK) or on CPU
(gloo). A mixed-precision policy computes in the model dtype and reduces gradients in float32.

Invariants a caller can rely on:
- Gradients are SUMMED over ranks, never averaged (`apply_fsdp2` sets FSDP2's gradient divide
  factor to 1): every rank's loss is already divided by the GLOBAL token counts of the step
  (`all_reduce_sum` of the counts), so the sum is exactly the full batch's gradient.
- The gradient norm that is clipped and reported is the global one (a DTensor reduced over ranks).
- State dicts are full, unsharded CPU tensors in Hugging Face naming for the model and fully
  qualified parameter names for AdamW's state, in both modes: a checkpoint written at one world
  size loads at any other, `single` included. Under `fsdp2` gathering is collective (every rank
  calls) and only rank 0 receives the tensors; loading takes the full state on every rank.

What is NOT covered here: launching the processes and the process group
(agentrl.trainer.distributed), which rank trains on which sequences (the callers, with
`distributed.rank_share`), tensor/pipeline parallelism (the Megatron backend's job), and CPU
offload.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

Parallelism = Literal["single", "fsdp2"]


def distributed_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def resolve_device(device: str) -> torch.device:
    """`trainer.device` as a torch device (`auto`: the GPU when there is one)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device {device!r} but no CUDA GPU is visible; use 'cpu'")
    return torch.device(device)


def training_device(parallelism: Parallelism, device: str) -> torch.device:
    """Where this process trains: `device` for `single`; this rank's GPU (LOCAL_RANK, as
    torchrun sets it) or the CPU for `fsdp2`."""
    if parallelism == "single":
        if distributed_ready():
            import torch.distributed as dist

            if dist.get_world_size() > 1:
                raise ValueError(
                    f"trainer.parallelism 'single' in a process group of "
                    f"{dist.get_world_size()} ranks would train {dist.get_world_size()} "
                    "unrelated copies; set trainer.parallelism: fsdp2"
                )
        return resolve_device(device)
    if not distributed_ready():
        raise RuntimeError(
            "trainer.parallelism 'fsdp2' needs an initialised torch.distributed process group: "
            "launch with `agentrl train|sft --nproc-per-node N` or under torchrun (e.g. "
            "`torchrun --nproc-per-node 8 ...`), which the trainer's entrypoints initialise; on "
            "one device use 'single'"
        )
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return resolved


def apply_fsdp2(model: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Shard `model` (a Hugging Face causal LM with `model.model.layers`) in place."""
    if not distributed_ready():
        training_device("fsdp2", "auto")  # raises the explanatory error
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__} has no model.layers to shard; FSDP2 here "
            "supports Hugging Face decoder-only causal LMs"
        )
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Sum, not average: the loss is normalised by the global counts already. A plain
            # SUM (no NCCL PreMulSum) also works on gloo, which has no AVG or PreMulSum.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def model_state_dict(model: torch.nn.Module, parallelism: Parallelism) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters and buffers on CPU (rank 0 only under `fsdp2`)."""
    if parallelism == "single":
        return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_model_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], parallelism: Parallelism
) -> None:
    if parallelism == "single":
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state_dict(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, parallelism: Parallelism
) -> dict[str, Any]:
    """AdamW's full state keyed by parameter name (rank 0 only under `fsdp2`); the same layout
    in both modes (torch.distributed.checkpoint's helpers need no process group for `single`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state_dict(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    parallelism: Parallelism,
) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model,
        optimizer,
        _keyed_by_name(model, state),
        options=StateDictOptions(full_state_dict=True),
    )


def _keyed_by_name(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints of `single` before names were used key AdamW's state by parameter position
    (`optimizer.state_dict()`); positions follow `named_parameters()`, so map them to names."""
    if not any(isinstance(key, int) for key in state.get("state", {})):
        return state
    names = [name for name, _ in model.named_parameters()]
    return {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def all_reduce_sum(values: list[int], parallelism: Parallelism, device: torch.device) -> list[int]:
    """`values` summed over ranks (unchanged on one device)."""
    if parallelism == "single":
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_metrics(
    metrics: dict[str, float], parallelism: Parallelism, device: torch.device
) -> dict[str, float]:
    """Per-rank metric sums summed over ranks (every rank reports the same names)."""
    if parallelism == "single":
        return metrics
    import torch.distributed as dist

    names = sorted(metrics)
    tensor = torch.tensor([metrics[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(names, tensor.tolist(), strict=True))


def is_main_process(parallelism: Parallelism) -> bool:
    """Rank 0 writes files (exports, checkpoints); every rank takes part in gathering."""
    if parallelism == "single":
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0
