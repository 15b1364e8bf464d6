"""Trainer sub-commands for the `agentrl` CLI; the main CLI registers `sft_app` as `agentrl sft`,
`eval_app` as `agentrl eval`, and the functions `train`, `report`, `make_calculator` and
`make_word_problems` as `agentrl train`, `agentrl report`, `agentrl data make-calculator` and
`agentrl data make-word-problems`.

    agentrl sft --recipe recipes/quickstart.yaml [--data trajectories.jsonl] [--output DIR]
    agentrl train --recipe recipes/quickstart.yaml [--max-steps N]
    agentrl train|sft ... --nproc-per-node N     # data parallel (trainer.parallelism: fsdp2),
                                                 # or trainer.backend: megatron (TP x PP x DP)
    agentrl eval --recipe recipes/quickstart.yaml --data eval.jsonl -k 4 [--out eval.json]
    agentrl report RUN_DIR
    agentrl data make-calculator --recipe recipes/quickstart.yaml --out data/calculator
    agentrl data make-word-problems --recipe recipes/smollm2_word_problems.yaml --out DIR

Parses the recipe first and imports torch/transformers only when the command runs.
`--nproc-per-node N` re-launches the same command line under torchrun (distributed.py); a
command torchrun started runs data-parallel by itself, and only rank 0 prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from agentrl.common.cli_errors import fail, load_recipe_or_exit, require

console = Console()
err_console = Console(stderr=True)
# Piped output (logs, CI) gets the whole evaluation table instead of one squeezed to 80 columns.
TABLE_WIDTH_PIPED = 160

NPROC_HELP = (
    "trainer processes on this machine: re-runs this command under torchrun (standalone); "
    "needs trainer.parallelism: fsdp2, or trainer.backend: megatron with a multiple of its "
    "tensor x pipeline size"
)

sft_app = typer.Typer(help="Supervised fine-tuning on tool-use trajectories (cold start).")
eval_app = typer.Typer(help="Evaluate the served policy on a data set: avg@k, pass@k, tools.")


@sft_app.callback(invoke_without_command=True)
def sft(
    recipe: Annotated[
        Path,
        typer.Option(
            "--recipe",
            "-r",
            envvar="AGENTRL_RECIPE",
            help="YAML recipe with model and sft sections",
        ),
    ],
    data: Annotated[
        Path | None, typer.Option(help="JSONL trajectories; default: the recipe's sft.train_path")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="checkpoint directory to write; default: sft.output_dir or <run dir>/sft"
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="checkpoint to start from; default: the recipe's model.path")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="optimizer steps; default: sft.max_steps or sft.num_epochs epochs"
        ),
    ] = None,
    log_every: Annotated[int, typer.Option(min=1, help="print every N steps")] = 10,
    nproc_per_node: Annotated[int | None, typer.Option(min=1, help=NPROC_HELP)] = None,
) -> None:
    """Fine-tune the recipe's model on trajectories; write a Hugging Face checkpoint."""
    from agentrl.common.config import ModelConfig

    config = load_recipe_or_exit(recipe)
    if model is not None:
        dtype = config.model.dtype if config.model else "float32"
        config = config.model_copy(update={"model": ModelConfig(path=model, dtype=dtype)})
    if config.model is None:
        raise fail(
            f"{recipe}: SFT starts from a model: set model.path in the recipe (a Hugging Face "
            "checkpoint directory; `agentrl model init --preset tiny --out DIR` makes a tiny "
            "one) or pass --model DIR"
        )
    # SFT needs no service; its checkpoint is checked before torch loads.
    require(config, recipe, services=(), files=("model.path",))
    _relaunch_or_exit(nproc_per_node, config)

    from transformers.utils import logging as transformers_logging

    from agentrl.trainer.distributed import env_rank, process_group
    from agentrl.trainer.sft import run_sft

    transformers_logging.disable_progress_bar()  # loading/saving bars would break the step lines

    def show(record: dict) -> None:
        if record["step"] == 1 or record["step"] % log_every == 0:
            console.print(
                f"step {record['step']:>5}  loss {record['loss']:.4f}  "
                f"grad_norm {record['grad_norm']:.3f}  lr {record['learning_rate']:.2e}"
                f"  {record['num_tokens'] / record['step_time_s']:.0f} tokens/s"
            )

    try:
        with process_group(config.trainer):
            result = run_sft(
                config, train_path=data, output_dir=output, max_steps=max_steps, on_step=show
            )
    except ValueError as exc:
        raise fail(str(exc)) from None
    if env_rank() != 0:
        return
    dropped = (
        f", {result.num_dropped_too_long} dropped as too long"
        if result.num_dropped_too_long
        else ""
    )
    console.print(
        f"SFT done: {result.num_steps} steps on {result.num_examples} trajectories"
        f"{dropped}; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
        f"{result.tokens_per_s:.0f} tokens/s. Checkpoint: {result.output_dir}"
    )


@eval_app.callback(invoke_without_command=True)
def evaluate(
    recipe: Annotated[
        Path,
        typer.Option(
            "--recipe",
            "-r",
            envvar="AGENTRL_RECIPE",
            help="YAML recipe: rollout, sandbox, reward addresses",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(help="JSONL/Parquet prompts; default: the recipe's data.eval_path"),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="samples per prompt")] = 4,
    out: Annotated[
        Path | None, typer.Option(help="JSON report to write; default: <run dir>/eval.json")
    ] = None,
    max_turns: Annotated[int | None, typer.Option(min=1, help="turns per episode")] = None,
    max_tool_calls: Annotated[
        int | None,
        typer.Option(min=0, help="tool calls per episode (the task default, 0, allows none)"),
    ] = None,
) -> None:
    """Run DATA through the rollout path (k samples each) and print/write avg@k and pass@k."""
    config = load_recipe_or_exit(recipe)
    data = data or (config.data.eval_path if config.data else None)
    if data is None:
        raise fail("no data set: pass --data or set data.eval_path")
    out = out or Path(config.run.output_dir) / "eval.json"
    # An evaluation needs vLLM, reward and its tools, not Redis or the rollout workers.
    require(config, recipe, data_path=data, skip=("redis", "rollout"))

    from agentrl.trainer.eval_job import run_eval
    from agentrl.trainer.evaluation import report_table

    try:
        limits = {
            name: value
            for name, value in (("max_turns", max_turns), ("max_tool_calls", max_tool_calls))
            if value is not None
        }
        result = run_eval(config, data, k, out, limits=limits)
    except ValueError as exc:
        raise fail(str(exc)) from None
    table_console = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH_PIPED)
    table_console.print(report_table(result.report))
    table_console.print(f"report: {out}")


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_DIR",
            help="the run's directory (run.output_dir): metrics.jsonl, optional eval/, "
            "samples.jsonl, config.json",
        ),
    ],
) -> None:
    """Write RUN_DIR/report/: a PNG per training curve, report.md and a self-contained report.html."""
    from agentrl.trainer.report import ReportInputError, write_report

    try:
        paths = write_report(run_dir)
    except (ReportInputError, OSError) as exc:  # OSError: an unreadable file, a full disk
        # The message holds paths and file text: printed as is, never read as markup.
        err_console.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    for path in [*paths.plots, paths.markdown, paths.html]:
        typer.echo(path)  # plain lines, never wrapped: scripts read them


def _load_recipe_or_exit(recipe: Path):
    return load_recipe_or_exit(recipe)


def _relaunch_or_exit(nproc_per_node: int | None, config) -> None:
    """With `--nproc-per-node`, become torchrun running this same command (returns only
    inside it); a wrong parallelism or count is an error message and exit code 1."""
    if nproc_per_node is None:
        return
    from agentrl.trainer.distributed import relaunch_under_torchrun

    try:
        relaunch_under_torchrun(nproc_per_node, config.trainer)
    except ValueError as exc:
        raise fail(str(exc)) from None


def train(
    recipe: Annotated[
        Path,
        typer.Option(
            "--recipe",
            "-r",
            envvar="AGENTRL_RECIPE",
            help="YAML recipe: model, data, trainer, algorithm",
        ),
    ],
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="optimizer steps; default: trainer.total_steps")
    ] = None,
    nproc_per_node: Annotated[int | None, typer.Option(min=1, help=NPROC_HELP)] = None,
) -> None:
    """RL-train the recipe's policy against the running stack (`agentrl up`); resumes from the
    run directory's latest checkpoint."""
    config = _load_recipe_or_exit(recipe)
    if config.model is None:
        raise fail(
            f"{recipe}: RL starts from a model: set model.path in the recipe (a Hugging Face "
            "checkpoint directory, e.g. the SFT output `agentrl sft -r RECIPE` writes)"
        )
    # Checked once, before torchrun's ranks start: the model, the prompts, and every service
    # the run talks to (Redis, vLLM, reward, the tools its prompts use, rollout.address's).
    require(config, recipe, files=("model.path", "data.train_path"))
    _relaunch_or_exit(nproc_per_node, config)
    from agentrl.common.streams import StreamUnavailableError
    from agentrl.trainer.distributed import env_rank
    from agentrl.trainer.main import train_with_display

    try:
        result = train_with_display(config, max_steps, console)
    except StreamUnavailableError as exc:  # Redis went away mid-run: a service, exit code 2
        raise fail(
            f"{exc}. The local stack's Redis is the machine's: start it with "
            "`redis-server --daemonize yes` (scripts/setup.sh does), then run the same "
            "command again (it resumes from the last checkpoint).",
            code=2,
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if env_rank() != 0:
        return
    console.print(
        f"training done: {result.steps} steps, policy version "
        f"{result.policy_version}; run directory {result.run_dir} "
        f"(`agentrl report {result.run_dir}` for plots and a summary)"
    )


def make_calculator(
    out: Annotated[Path, typer.Option("--out", help="directory for train/eval/sft JSONL")],
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            "-r",
            envvar="AGENTRL_RECIPE",
            help="recipe whose sandbox service executes the SFT tool calls",
        ),
    ] = None,
    num_train: Annotated[int, typer.Option(min=1, help="RL prompts")] = 2000,
    num_eval: Annotated[int, typer.Option(min=1, help="held-out prompts")] = 100,
    num_sft: Annotated[int, typer.Option(min=1, help="cold-start trajectories")] = 1500,
    tool_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of SFT trajectories that call the tool")
    ] = 0.4,
    seed: Annotated[int, typer.Option(help="the same seed gives the same files")] = 0,
) -> None:
    """Write the quickstart's calculator task: RL and eval prompts, and SFT trajectories whose
    tool calls the sandbox service really executed (it must be up: `agentrl up`)."""
    from agentrl.trainer.calculator import make_calculator_data

    sizes = (num_train, num_eval, num_sft)
    _write_executed_task(make_calculator_data, out, recipe, sizes, tool_fraction, seed)


def _write_executed_task(
    make_data, out: Path, recipe: Path | None, sizes: tuple[int, int, int], tool_fraction, seed
) -> None:
    """`make_data(out, sandbox, ...)` with the recipe's sandbox service, which executes the SFT
    trajectories' tool calls (checked to answer first); `sizes`: train, eval and SFT counts.
    Prints the summary."""
    import json

    from agentrl.common.config import AgentRLConfig

    config = _load_recipe_or_exit(recipe) if recipe else AgentRLConfig()
    require(config, recipe, services=("sandbox",))
    from agentrl.sandbox.client import SandboxClient

    try:
        with SandboxClient(config.sandbox.target()) as sandbox:
            num_train, num_eval, num_sft = sizes
            summary = make_data(
                out,
                sandbox,
                num_train=num_train,
                num_eval=num_eval,
                num_sft=num_sft,
                tool_fraction=tool_fraction,
                seed=seed,
            )
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    console.print(json.dumps(summary, indent=2))


def make_word_problems(
    out: Annotated[Path, typer.Option("--out", help="directory for train/eval/sft JSONL")],
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            "-r",
            envvar="AGENTRL_RECIPE",
            help="recipe whose sandbox service executes the SFT tool calls",
        ),
    ] = None,
    num_train: Annotated[int, typer.Option(min=1, help="RL prompts")] = 2000,
    num_eval: Annotated[int, typer.Option(min=1, help="held-out prompts")] = 100,
    num_sft: Annotated[int, typer.Option(min=1, help="cold-start trajectories")] = 400,
    tool_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of SFT trajectories that call the tool")
    ] = 0.4,
    seed: Annotated[int, typer.Option(help="the same seed gives the same files")] = 0,
) -> None:
    """Write the SmolLM2 recipe's task: multi-step arithmetic word problems, RL and eval prompts,
    and SFT trajectories whose Hermes tool calls the sandbox service really executed (it must be
    up: `agentrl up`)."""
    from agentrl.trainer.word_problems import make_word_problem_data

    sizes = (num_train, num_eval, num_sft)
    _write_executed_task(make_word_problem_data, out, recipe, sizes, tool_fraction, seed)
