"""The `torch` training backend: a Hugging Face causal LM on CPU, one GPU, or FSDP2 over ranks.

- Weights stay float32 (the optimizer's master copy); with `dtype="bfloat16"` the forward runs
  under autocast in bfloat16 (the GPU default). float16 is refused: it needs loss scaling.
- Micro-batches are packing.py's packed rows; `packed_attention` picks how sequences are kept
  apart (an explicit block-diagonal mask, or restarting position ids for FlashAttention).
- Optimizer: AdamW; the learning rate is set by hand each step from `OptimizerSettings`, so the
  schedule's whole state is the step counter (exact on resume).
- Parallelism lives in parallelize.py; this file calls it and never branches on rank otherwise.
  Under `fsdp2` each rank is given its own share of the step's micro-batches (the caller splits
  them, agentrl.trainer.distributed.rank_share); every verb is then collective: all ranks call
  it, in the same order, with the same number of micro-batches. Gradients are summed over
  ranks, and `forward_backward`'s metrics are summed over micro-batches AND ranks, so a step
  reports what world size 1 reports for the same global batch.

Build it with `agentrl.trainer.backends.create_backend(config, optimizer)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch

from agentrl.trainer.backends.interface import (
    LossFn,
    OptimizerSettings,
    StepStats,
    TrainerBackend,
)
from agentrl.trainer.backends.torch import parallelize
from agentrl.trainer.loss import GlobalTokenCounts
from agentrl.trainer.packing import MicroBatch, token_logprobs_and_entropy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


resolve_device = parallelize.resolve_device


class TorchBackend(TrainerBackend):
    """A Hugging Face checkpoint directory under training with AdamW."""

    def __init__(
        self,
        model_path: str | Path,
        optimizer: OptimizerSettings,
        *,
        device: str = "auto",
        dtype: str = "float32",
        parallelism: parallelize.Parallelism = "single",
        gradient_checkpointing: bool = False,
        packed_attention: Literal["mask_4d", "position_ids"] = "mask_4d",
        attn_implementation: str = "sdpa",
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise ValueError(
                f"{model_path} is not a Hugging Face checkpoint directory (no "
                "config.json); run `agentrl model init` or point model.path at one"
            )
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"training dtype {dtype!r} is not supported; use float32 or bfloat16 "
                "(float16 would need loss scaling)"
            )
        if parallelism not in ("single", "fsdp2"):
            raise ValueError(f"unknown parallelism {parallelism!r}; use 'single' or 'fsdp2'")
        self.settings = optimizer
        self.parallelism = parallelism
        self.packed_attention = packed_attention
        self.compute_dtype = DTYPES[dtype]
        self.device = parallelize.training_device(parallelism, device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.float32, attn_implementation=attn_implementation
        )
        self.hf_config = self.model.config
        if gradient_checkpointing:
            # Non-reentrant: works with inputs that need no grad and with FSDP2.
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.to(self.device)
        if parallelism == "fsdp2":
            parallelize.apply_fsdp2(self.model, self.compute_dtype)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=optimizer.learning_rate * optimizer.lr_factor(0),
            betas=optimizer.betas,
            weight_decay=optimizer.weight_decay,
        )
        self.step = 0

    def _autocast(self):
        # Under FSDP2 the mixed-precision policy casts; on one device autocast does.
        if self.compute_dtype == torch.float32 or self.parallelism == "fsdp2":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _on_device(self, micro_batch: MicroBatch) -> MicroBatch:
        return dataclasses.replace(
            micro_batch,
            seq_index=micro_batch.seq_index.to(self.device),
            per_token={k: v.to(self.device) for k, v in micro_batch.per_token.items()},
        )

    def _forward(self, micro_batch: MicroBatch, temperature: float):
        with self._autocast():
            return token_logprobs_and_entropy(
                self.model, micro_batch, temperature, attention=self.packed_attention
            )

    def logprobs(
        self, micro_batches: Sequence[MicroBatch], temperature: float = 1.0
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.model.eval()
        out = []
        with torch.no_grad():
            for micro_batch in micro_batches:
                logprobs, entropy = self._forward(micro_batch, temperature)
                out.append((logprobs.float().cpu(), entropy.float().cpu()))
        return out

    def forward_backward(
        self, micro_batches: Sequence[MicroBatch], loss_fn: LossFn, temperature: float = 1.0
    ) -> dict[str, float]:
        self.model.train()  # gradient checkpointing only acts in train mode; Qwen3 has no dropout
        totals: dict[str, float] = {}
        for micro_batch in micro_batches:
            logprobs, entropy = self._forward(micro_batch, temperature)
            loss, metrics = loss_fn(logprobs, entropy, self._on_device(micro_batch))
            loss.backward()
            for name, value in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(value)
        return parallelize.all_reduce_metrics(totals, self.parallelism, self.device)

    def optimizer_step(self) -> StepStats:
        learning_rate = self.settings.learning_rate * self.settings.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.settings.max_grad_norm
        )
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        # A non-finite gradient would poison the Adam moments: skip the update, keep the step.
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepStats(step=self.step, grad_norm=grad_norm, learning_rate=learning_rate)

    def global_counts(self, local: GlobalTokenCounts) -> GlobalTokenCounts:
        values = [local.num_loss_tokens, local.num_sequences, local.num_tokens]
        return GlobalTokenCounts(*parallelize.all_reduce_sum(values, self.parallelism, self.device))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": parallelize.model_state_dict(self.model, self.parallelism),
            "optimizer": parallelize.optimizer_state_dict(
                self.model, self.optimizer, self.parallelism
            ),
            "schedule": {"step": self.step},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parallelize.load_model_state_dict(self.model, state["model"], self.parallelism)
        parallelize.load_optimizer_state_dict(
            self.model, self.optimizer, state["optimizer"], self.parallelism
        )
        self.step = int(state["schedule"]["step"])

    def is_main_process(self) -> bool:
        return parallelize.is_main_process(self.parallelism)

    def hf_weights(self) -> dict[str, torch.Tensor]:
        state = parallelize.model_state_dict(self.model, self.parallelism)
        if not parallelize.is_main_process(self.parallelism):
            return {}
        # Tied embeddings keep both names, each its own tensor: vLLM's in-place reload updates
        # a tied lm_head only when `lm_head.weight` is among the weights it is given (measured:
        # without it the served logits kept the old embedding, log-probs off by ~1).
        return {
            name: tensor.clone() if name == "lm_head.weight" else tensor
            for name, tensor in state.items()
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        state = parallelize.model_state_dict(self.model, self.parallelism)
        if parallelize.is_main_process(self.parallelism):
            directory.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(directory, state_dict=state)
            self.tokenizer.save_pretrained(directory)
        return directory
