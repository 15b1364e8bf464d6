"""Trainer sub-commands for the `agentrl` CLI; the lead registers `sft_app` as `agentrl sft`.

    agentrl sft --recipe recipes/quickstart.yaml [--data trajectories.jsonl] [--output DIR]

Parses the recipe first and imports torch/transformers only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

sft_app = typer.Typer(help="Supervised fine-tuning on tool-use trajectories (cold start).")


@sft_app.callback(invoke_without_command=True)
def sft(
    recipe: Annotated[Path, typer.Option("--recipe", "-r", envvar="AGENTRL_RECIPE",
                                         help="YAML recipe with model and sft sections")],
    data: Annotated[Path | None, typer.Option(
        help="JSONL trajectories; default: the recipe's sft.train_path")] = None,
    output: Annotated[Path | None, typer.Option(
        help="checkpoint directory to write; default: sft.output_dir or <run dir>/sft")] = None,
    model: Annotated[Path | None, typer.Option(
        help="checkpoint to start from; default: the recipe's model.path")] = None,
    max_steps: Annotated[int | None, typer.Option(
        min=1, help="optimizer steps; default: sft.max_steps or sft.num_epochs epochs")] = None,
    log_every: Annotated[int, typer.Option(min=1, help="print every N steps")] = 10,
) -> None:
    """Fine-tune the recipe's model on trajectories; write a Hugging Face checkpoint."""
    from agentrl.common.config import ConfigError, ModelConfig, load_config

    try:
        config = load_config(recipe)
        if model is not None:
            dtype = config.model.dtype if config.model else "float32"
            config = config.model_copy(update={"model": ModelConfig(path=model, dtype=dtype)})
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=1) from None

    from agentrl.trainer.sft import run_sft

    def show(record: dict) -> None:
        if record["step"] == 1 or record["step"] % log_every == 0:
            console.print(f"step {record['step']:>5}  loss {record['loss']:.4f}  "
                          f"grad_norm {record['grad_norm']:.3f}  lr {record['learning_rate']:.2e}"
                          f"  {record['num_tokens'] / record['step_time_s']:.0f} tokens/s")

    try:
        result = run_sft(config, train_path=data, output_dir=output, max_steps=max_steps,
                         on_step=show)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=1) from None
    dropped = (f", {result.num_dropped_too_long} dropped as too long"
               if result.num_dropped_too_long else "")
    console.print(f"SFT done: {result.num_steps} steps on {result.num_examples} trajectories"
                  f"{dropped}; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
                  f"{result.tokens_per_s:.0f} tokens/s. Checkpoint: {result.output_dir}")
