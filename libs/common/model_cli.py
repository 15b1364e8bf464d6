"""`agentrl model ...`: make the policy checkpoints a run starts from (registered by the main CLI).

    agentrl model init --preset tiny --out runs/local/model [--data train.jsonl]

`init` trains a byte-level BPE tokenizer on the task's text and initialises a small
Qwen3-architecture model (agentrl.common.models); transformers and `vllm serve` load the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(help="Create policy checkpoints (tiny local models).", no_args_is_help=True)


@model_app.callback()
def model_group() -> None:
    """Create policy checkpoints (tiny local models)."""
    # A callback keeps `init` a subcommand even while it is the only one (typer would
    # otherwise collapse a one-command app into that command).


@model_app.command("init")
def model_init(
    out: Annotated[Path, typer.Option("--out", help="directory to write the checkpoint to")],
    preset: Annotated[str, typer.Option(help="model size: tiny | small")] = "tiny",
    data: Annotated[Path | None, typer.Option(
        help="JSONL (every string field) or text file to train the tokenizer on; "
             "default: a built-in calculator-task corpus")] = None,
    seed: Annotated[int, typer.Option(help="seed of the weight initialisation")] = 0,
) -> None:
    """Train a tokenizer on the task text and save a randomly initialised Qwen3 model to OUT."""
    from agentrl.common import models

    try:
        texts = models.read_corpus(data) if data else models.default_corpus(seed=seed)
        path = models.init_tiny_model(out, texts, preset=preset, seed=seed)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    info = (path / "agentrl_model.json").read_text()
    typer.echo(f"wrote {path}\n{info}")
