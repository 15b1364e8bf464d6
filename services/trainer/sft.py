"""Supervised fine-tuning on multi-turn tool-use trajectories (the cold start before RL).

Input: JSONL, one trajectory per line, `{"messages": [{"role": ..., "content": ...}, ...]}` with
system/user messages first, then assistant messages (tool calls written inline in the recipe's
tool format, e.g. `<code>...</code>`) and tool messages holding the raw tool results. Each
trajectory becomes one token sequence exactly as the rollout builds it (rendering.py,
docs/sft.md); the loss is the token-mean negative log-likelihood over assistant tokens (and the
final EOS) of the whole batch: prompts and tool results are masked out.

Training: trajectories in a seeded shuffle per epoch (data.EpochOrder), `batch_size` per
optimizer step, packed into micro-batches (packing.py) on the torch backend; AdamW with linear
warm-up and cosine decay to 0 at the last step. At the end the model and tokenizer are written
as a Hugging Face checkpoint directory, and every step's metrics to `sft_metrics.jsonl` in it.

Data parallel (`trainer.parallelism: fsdp2` under torchrun, agentrl.trainer.distributed): every
rank reads the trajectories, takes the same batch in the same seeded order and packs the same
micro-batches, then trains on its share of them; the loss is normalised by the batch's global
token count, so the steps equal world size 1's. Rank 0 writes the metrics, prints (`on_step`)
and writes the checkpoint, which every rank gathers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.data import EpochOrder
from agentrl.trainer.distributed import rank_share
from agentrl.trainer.loss import GlobalTokenCounts
from agentrl.trainer.packing import MicroBatch, pack_micro_batches
from agentrl.trainer.rendering import episode_segments, tokenize_segments


@dataclass(frozen=True)
class SFTExample:
    token_ids: list[int]
    loss_mask: list[int]


@dataclass
class SFTResult:
    output_dir: Path
    num_steps: int
    num_examples: int
    num_dropped_too_long: int
    losses: list[float] = field(default_factory=list)
    tokens_per_s: float = 0.0
    steps_per_s: float = 0.0
    backend: Any = field(default=None, repr=False)
    """The trained backend (still in memory), for callers that continue with it."""


def load_trajectories(path: str | Path) -> list[list[dict[str, Any]]]:
    """The `messages` list of every JSONL row; ValueError names the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"SFT data {path} not found; set sft.train_path to a JSONL file")
    trajectories = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError(
                f'{path}:{number}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}'
            )
        trajectories.append(messages)
    if not trajectories:
        raise ValueError(f"{path} holds no trajectories")
    return trajectories


def build_examples(
    trajectories: list[list[dict[str, Any]]],
    tokenizer: Any,
    tool_format: str,
    prompt_format: str,
    max_length_tokens: int,
    source: str = "trajectory",
) -> tuple[list[SFTExample], int]:
    """Token ids and assistant-only loss masks; trajectories over the length are dropped."""
    examples, dropped = [], 0
    for index, messages in enumerate(trajectories):
        segments = episode_segments(
            messages, tokenizer, tool_format, prompt_format, where=f"{source} {index}"
        )
        token_ids, loss_mask = tokenize_segments(segments, tokenizer)
        if len(token_ids) > max_length_tokens:
            dropped += 1
            continue
        examples.append(SFTExample(token_ids, loss_mask))
    if not examples:
        raise ValueError(
            f"every trajectory is longer than max_length_tokens="
            f"{max_length_tokens}; raise sft.max_length_tokens"
        )
    return examples, dropped


def sft_loss_fn(counts: GlobalTokenCounts):
    """Token-mean NLL over the step's assistant tokens (a backend LossFn)."""

    def loss_fn(logprobs: torch.Tensor, entropy: torch.Tensor, micro_batch: MicroBatch):
        mask = micro_batch.per_token["loss_mask"].bool() & (micro_batch.seq_index >= 0)
        denominator = max(counts.num_loss_tokens, 1)
        loss = -torch.where(mask, logprobs, 0.0).sum() / denominator
        return loss, {
            "loss": loss.detach(),
            "entropy": torch.where(mask, entropy, 0.0).sum().detach() / denominator,
        }

    return loss_fn


def sft_cpu_threads(config: Any) -> int:
    """Torch threads for SFT (0: torch's default): `sft.cpu_threads`, else `trainer.cpu_threads`
    (as for RL, OpenMP threads must not fight other jobs on the cores)."""
    if config.sft.cpu_threads is not None:
        return config.sft.cpu_threads
    return config.trainer.cpu_threads


def run_sft(
    config: Any,
    train_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> SFTResult:
    """Fine-tune `config.model.path` on the trajectories; returns where the checkpoint went."""
    from agentrl.trainer.backends import create_backend

    sft = config.sft
    train_path = train_path or sft.train_path
    if train_path is None:
        raise ValueError("no SFT data: set sft.train_path or pass --data")
    if config.model is None:
        raise ValueError("the recipe has no `model` section; set model.path to the checkpoint")
    output_dir = Path(output_dir or sft.output_dir or Path(config.run.output_dir) / "sft")
    trajectories = load_trajectories(train_path)
    max_steps = (
        max_steps or sft.max_steps or sft.num_epochs * math.ceil(len(trajectories) / sft.batch_size)
    )
    settings = OptimizerSettings(
        learning_rate=sft.learning_rate,
        weight_decay=sft.weight_decay,
        max_grad_norm=sft.max_grad_norm,
        warmup_steps=min(sft.lr_warmup_steps, max_steps - 1),
        schedule="cosine",
        total_steps=max_steps,
    )
    # The backend sets the process's torch threads from trainer.cpu_threads: give it SFT's.
    config = config.model_copy(
        update={
            "trainer": config.trainer.model_copy(update={"cpu_threads": sft_cpu_threads(config)})
        }
    )
    backend = create_backend(config, settings)
    examples, dropped = build_examples(
        trajectories,
        backend.tokenizer,
        config.rollout.tool_format,
        sft.prompt_format,
        sft.max_length_tokens,
        str(train_path),
    )
    order = EpochOrder(examples, seed=config.run.seed)
    torch.manual_seed(config.run.seed)
    result = SFTResult(output_dir, max_steps, len(examples), dropped, backend=backend)
    main = backend.is_main_process()
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    started, num_tokens = time.perf_counter(), 0
    with (output_dir / "sft_metrics.jsonl").open("w") if main else nullcontext() as metrics_file:
        for _ in range(max_steps):
            step_start = time.perf_counter()
            batch = order.take(min(sft.batch_size, len(examples)))
            micro_batches = rank_share(
                pack_micro_batches(
                    [e.token_ids for e in batch],
                    max(sft.micro_batch_tokens, sft.max_length_tokens),
                    {"loss_mask": [e.loss_mask for e in batch]},
                )
            )
            counts = backend.global_counts(
                sum(
                    (
                        GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index)
                        for mb in micro_batches
                    ),
                    GlobalTokenCounts(0, 0, 0),
                )
            )
            metrics, stats = backend.train_step(micro_batches, sft_loss_fn(counts))
            num_tokens += counts.num_tokens
            record = {
                "step": stats.step,
                "epoch": order.epoch,
                "loss": metrics["loss"],
                "entropy": metrics["entropy"],
                "grad_norm": stats.grad_norm,
                "learning_rate": stats.learning_rate,
                "num_tokens": counts.num_tokens,
                "num_loss_tokens": counts.num_loss_tokens,
                "step_time_s": time.perf_counter() - step_start,
            }
            result.losses.append(metrics["loss"])
            if main:
                metrics_file.write(json.dumps(record) + "\n")
                if on_step is not None:
                    on_step(record)
    elapsed_s = time.perf_counter() - started
    result.tokens_per_s = num_tokens / elapsed_s
    result.steps_per_s = max_steps / elapsed_s
    backend.save_pretrained(output_dir)
    return result
