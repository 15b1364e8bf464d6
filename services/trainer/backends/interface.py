"""The contract of a training backend: what the RL driver and SFT ask of the model they train.

A backend owns the policy (weights, optimizer, learning-rate schedule) on its devices and does
four things with it:

1. `logprobs`: per-token log-probs and entropies of packed micro-batches, no gradient (π_old,
   π_prox, the reference policy, the post-sync drift check).
2. `forward_backward`: the same forward with gradient, then `loss_fn` per micro-batch and its
   backward; the loss function normalises by the GLOBAL counts of the optimizer step
   (`global_counts` all-reduces them over data-parallel ranks), so gradients accumulate exactly.
3. `optimizer_step`: clip the global gradient norm, step the optimizer and the schedule.
4. Weights out: `state_dict`/`load_state_dict` for checkpoints (agentrl.trainer.checkpoint),
   `hf_weights` (full tensors in Hugging Face naming: what every weight transport sends) and
   `save_pretrained` (a full Hugging Face checkpoint directory with the tokenizer).

Backends live beside this file, one folder each (`torch/`: Hugging Face causal LM, single device
or FSDP2); `agentrl.trainer.backends.create_backend` picks one by `trainer.backend` through a
plain dict and is the only way the RL loop, SFT, evaluation and the benchmarks get one. A new
backend (e.g. `megatron`, which converts Hugging Face checkpoints in and out so the same verbs
hold) adds a folder, a line in `BACKENDS` and its name to `TrainerConfig.backend`.

The micro-batch layout (packed `[1, T]` rows, `seq_index`, per-token fields) is packing.py's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from agentrl.trainer.loss import GlobalTokenCounts
from agentrl.trainer.packing import MicroBatch

LossFn = Callable[
    [torch.Tensor, torch.Tensor, MicroBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]
]
"""(logprobs, entropy, micro_batch) -> (this micro-batch's share of the loss, its metrics).
Tensors are on the backend's device, in the micro-batch's layout; metrics are summed over the
micro-batches of a step, so each must already be a share of the global value."""


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and its learning-rate schedule (from TrainerConfig + AlgorithmConfig, or SFTConfig)."""

    learning_rate: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    total_steps: int | None = None
    """Steps at which `linear`/`cosine` reach 0; required by them."""

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.schedule != "constant" and not self.total_steps:
            raise ValueError(f"schedule {self.schedule!r} needs total_steps")

    def lr_factor(self, step: int) -> float:
        """Multiplier of `learning_rate` for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        if self.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step reports."""

    step: int
    """Optimizer steps taken so far, this one included."""
    grad_norm: float
    """Global L2 norm of the gradient before clipping (inf/nan: the step was skipped)."""
    learning_rate: float
    """Learning rate this step used."""


class TrainerBackend(ABC):
    """One policy under training; see the module docstring for the four verbs."""

    tokenizer: Any
    """The checkpoint's Hugging Face tokenizer."""
    hf_config: Any
    """The checkpoint's Hugging Face model config (written beside exported weights)."""
    device: torch.device

    @abstractmethod
    def logprobs(
        self, micro_batches: Sequence[MicroBatch], temperature: float = 1.0
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(log-probs, entropy) per micro-batch, float32 on CPU, without gradient."""

    @abstractmethod
    def forward_backward(
        self, micro_batches: Sequence[MicroBatch], loss_fn: LossFn, temperature: float = 1.0
    ) -> dict[str, float]:
        """Accumulate the gradient of `loss_fn` over this rank's micro-batches; metrics summed
        over the micro-batches and the data-parallel ranks (what one process would report)."""

    @abstractmethod
    def optimizer_step(self) -> StepStats:
        """Clip the gradient norm, step optimizer and schedule, zero the gradients."""

    @abstractmethod
    def global_counts(self, local: GlobalTokenCounts) -> GlobalTokenCounts:
        """`local` summed over data-parallel ranks (identity on one device)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and schedule state, full (unsharded) tensors on CPU."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (the backend must be built from the same model)."""

    @abstractmethod
    def hf_weights(self) -> dict[str, torch.Tensor]:
        """The policy's full weights in Hugging Face checkpoint naming, on CPU, in the training
        dtype, on the main process (an empty dict on the others: every rank calls it, gathering
        is collective). Tied weights appear under both names (vLLM reloads a tied
        head only when it is named). What the weight transports (agentrl.trainer.transports)
        send to vLLM."""

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a Hugging Face checkpoint directory: weights, config and tokenizer."""

    def is_main_process(self) -> bool:
        """Whether this process writes files (rank 0; always on one device)."""
        return True

    def train_step(
        self, micro_batches: Sequence[MicroBatch], loss_fn: LossFn, temperature: float = 1.0
    ) -> tuple[dict[str, float], StepStats]:
        """`forward_backward` over all micro-batches, then one `optimizer_step`."""
        metrics = self.forward_backward(micro_batches, loss_fn, temperature)
        return metrics, self.optimizer_step()
