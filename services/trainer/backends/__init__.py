"""Trainer backends: the one way the RL loop, SFT, evaluation and the benchmarks get a policy.

    backend = create_backend(config)                  # RL: optimizer from trainer + algorithm
    backend = create_backend(config, sft_settings)    # SFT: its own optimizer settings

`interface.py` is the contract (`TrainerBackend`: log-probs, forward/backward, optimizer step,
state dicts, weights out); each backend is a folder beside it (`torch/`), named in `BACKENDS`
and chosen by `trainer.backend`. A backend named in config but not built here is refused by
`agentrl config validate` (`BUILT_BACKENDS` below is what it checks), never at step 1.
"""

from __future__ import annotations

import importlib
from typing import Any

from agentrl.trainer.backends.interface import (
    LossFn,
    OptimizerSettings,
    StepStats,
    TrainerBackend,
)

# `trainer.backend` -> the module and the factory function that builds it from a recipe.
BACKENDS: dict[str, str] = {
    "torch": "agentrl.trainer.backends.torch:build",
    "megatron": "agentrl.trainer.backends.megatron:build",
}
BUILT_BACKENDS = tuple(BACKENDS)

__all__ = [
    "BACKENDS",
    "LossFn",
    "OptimizerSettings",
    "StepStats",
    "TrainerBackend",
    "create_backend",
    "rl_optimizer_settings",
]


def rl_optimizer_settings(config: Any) -> OptimizerSettings:
    """AdamW and its schedule for RL, from the `trainer` and `algorithm` sections."""
    trainer, algorithm = config.trainer, config.algorithm
    return OptimizerSettings(
        learning_rate=algorithm.learning_rate,
        weight_decay=trainer.weight_decay,
        max_grad_norm=trainer.max_grad_norm,
        warmup_steps=trainer.lr_warmup_steps,
        schedule=trainer.lr_schedule,
        total_steps=trainer.total_steps,
    )


def create_backend(
    config: Any, optimizer: OptimizerSettings | None = None, model_path: Any = None
) -> TrainerBackend:
    """The backend `config.trainer.backend` for `config.model.path` (or `model_path`), with
    `optimizer` (default: the RL settings of the recipe)."""
    kind = config.trainer.backend
    if kind not in BACKENDS:
        raise ValueError(
            f"trainer.backend {kind!r} is not built; choose one of {', '.join(BACKENDS)}"
        )
    if model_path is None:
        if config.model is None:
            raise ValueError("the recipe has no `model` section; set model.path")
        model_path = config.model.path
    module, _, name = BACKENDS[kind].partition(":")
    build = getattr(importlib.import_module(module), name)
    return build(config, optimizer or rl_optimizer_settings(config), model_path)
