"""The trainer process: `agentrl train` (a job with a live console) and `agentrl serve trainer`
(log lines, for containers) land here.

Thin on purpose (STYLE.md): the config is already parsed; heavy imports (torch, transformers,
vLLM's client) happen inside `run_training`, which owns the loop (rl_loop.py). Under torchrun
both run inside `distributed.process_group` and only rank 0 displays or logs steps.

SIGTERM/SIGINT stop the trainer with exit code 128 + the signal, a checkpoint write first
finished (shutdown.py: `stop_on_shutdown_signal`, `uninterrupted`).
"""

from __future__ import annotations

from typing import Any

from agentrl.common.config import AgentRLConfig
from agentrl.common.logging import get_logger
from agentrl.trainer import collapse
from agentrl.trainer.shutdown import stop_on_shutdown_signal

log = get_logger(__name__)


def step_line(record: dict[str, Any]) -> str:
    """One step as a console/log line: outcome, learning health, where the time went."""
    line = (
        f"step {record['step']:>4}  reward {record['reward_mean']:+.3f}  "
        f"acc {record['accuracy']:.3f}  tools/ep {record.get('tool_calls_mean', 0.0):.2f}  "
        f"kept {record['kept_group_ratio']:.2f}  entropy {record.get('entropy') or 0.0:.3f}  "
        f"grad {record['grad_norm'] or 0.0:.3f}  | wait {record['time_waiting_s']:.1f}s  "
        f"train {record['time_training_s']:.1f}s  sync {record['time_weight_sync_s']:.2f}s"
    )
    if record.get("logprob_drift_alarm"):
        line += f"  | WARNING log-prob drift {record['logprob_drift_max']:.1e} after sync"
    if record.get("logprob_drift_skipped"):
        line += "  | drift check skipped (no vLLM server answered)"
    if record.get("collapse_warning"):
        line += f"  | {collapse.describe(record)}"
    if "eval_avg_at_k" in record:
        line += f"  | eval avg@k {record['eval_avg_at_k']:.3f}"
        if "best_step" in record:
            line += f" (best {record['eval_best_avg_at_k']:.3f} at step {record['best_step']})"
    return line


def train_with_display(config: AgentRLConfig, max_steps: int | None, console: Any):
    """run_training with a progress bar and one line per step on a rich `console`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers.utils import logging as transformers_logging

    from agentrl.trainer.distributed import env_rank, process_group
    from agentrl.trainer.rl_loop import run_training

    # Per-step weight exports would each draw a "Writing model shards" bar over the display.
    transformers_logging.disable_progress_bar()
    total = max_steps or config.trainer.total_steps
    with stop_on_shutdown_signal(), process_group(config.trainer):
        if env_rank() != 0:  # one display per run: rank 0's
            return run_training(config, max_steps)
        with Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("steps", total=total)

            def show(record: dict) -> None:
                progress.console.print(step_line(record), soft_wrap=True)  # one line per step
                progress.update(bar, completed=record["step"])

            return run_training(config, max_steps, on_step=show)


def main(config: AgentRLConfig) -> None:
    """Train the recipe's policy for `trainer.total_steps` steps against the running stack."""
    from agentrl.trainer.distributed import env_rank, process_group
    from agentrl.trainer.rl_loop import run_training

    with stop_on_shutdown_signal(), process_group(config.trainer):
        result = run_training(config, on_step=lambda record: log.info("%s", step_line(record)))
    if env_rank() == 0:
        log.info(
            "training done: %d steps, policy version %d, run directory %s",
            result.steps,
            result.policy_version,
            result.run_dir,
        )
