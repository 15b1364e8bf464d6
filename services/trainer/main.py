"""The trainer process: `agentrl train` (a job with a live console) and `agentrl serve trainer`
(log lines, for containers) land here.

Thin on purpose (STYLE.md): the config is already parsed; heavy imports (torch, transformers,
vLLM's client) happen inside `run_training`, which owns the loop (rl_loop.py). Under torchrun
both run inside `distributed.process_group` and only rank 0 displays or logs steps.

SIGTERM/SIGINT (a pod evicted, `kill`, Ctrl-C) stop the trainer where it is, within a second
plus the clean-up (clients closed, status servers and process group stopped): it holds nothing
another process needs, since groups are acked only after the checkpoint that trained them
(rl_loop.py step 5). The groups read since the last checkpoint stay pending to the run's
consumer, and the next start resumes from that checkpoint and trains them again. The exit code
is 128 + the signal (143 for SIGTERM), as if the signal had killed it: not 0, which would mark
the trainer's Kubernetes Job complete instead of restarting its pod to resume the run. A signal
during a checkpoint write stops it once the checkpoint is written (`uninterrupted`). A second
signal during the clean-up (or the write) ends the process at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agentrl.common.config import AgentRLConfig
from agentrl.common.logging import get_logger
from agentrl.common.shutdown import SHUTDOWN_SIGNALS, install_shutdown_handler
from agentrl.trainer import collapse

log = get_logger(__name__)


class TrainingInterrupted(SystemExit):
    """A shutdown signal stopped the run; exit code 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class _Shield:
    """How many `uninterrupted` blocks are open, and the signal that arrived inside one."""

    depth = 0
    pending: int | None = None


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A shutdown signal arriving inside the block stops the trainer when the block ends, not
    in the middle: a checkpoint's files are written whole (torch.save interrupted mid-write
    raises an error of its own in place of `TrainingInterrupted`, and the exit code is lost)."""
    _Shield.depth += 1
    try:
        yield
    finally:
        _Shield.depth -= 1
    if not _Shield.depth and _Shield.pending is not None:
        signum, _Shield.pending = _Shield.pending, None
        raise TrainingInterrupted(signum)


@contextmanager
def stop_on_shutdown_signal() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into `TrainingInterrupted` raised in the main thread (elsewhere
    signal handlers cannot be installed: nothing changes); inside `uninterrupted`, at its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: Any) -> None:
        for each in SHUTDOWN_SIGNALS:  # a second signal: the default action, at once
            signal.signal(each, signal.SIG_DFL)
        if _Shield.depth:
            _Shield.pending = signum
            return
        raise TrainingInterrupted(signum)

    previous: dict = {}
    try:
        previous = install_shutdown_handler(on_signal)  # replays one held since start-up
        yield
    except TrainingInterrupted as stop:
        log.warning(
            "%s: training stopped; the groups read since the last checkpoint stay unacked and "
            "the next start resumes from that checkpoint",
            signal.Signals(stop.signum).name,
        )
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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
