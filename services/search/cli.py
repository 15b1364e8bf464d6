"""Command-line jobs of the search service: building an index and generating the QA world.

Two typer apps that the `agentrl` CLI mounts:
- `index_app`: `agentrl search index CORPUS.jsonl --out DIR [--dense] [--name N] [--overwrite]`
- `data_app`:  `agentrl data make-qa-world --seed N --out DIR [--num-passages ...]`
and `make_search_task_command`, which the main CLI registers as `agentrl data make-search-task
--world DIR --out DIR --recipe R` (the search quickstart's task, search_task.py).
Heavy imports happen inside the commands so `agentrl --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agentrl.common.cli_errors import fail

index_app = typer.Typer(help="Build search indexes.", add_completion=False)
data_app = typer.Typer(help="Generate data sets.", add_completion=False)


@index_app.command("index")
def index_command(
    corpus: Annotated[Path, typer.Argument(help="JSONL corpus of {id, title, text} rows")],
    out: Annotated[Path, typer.Option("--out", help="index directory to write")],
    dense: Annotated[
        bool,
        typer.Option(
            help="also build the all-MiniLM-L6-v2 dense index "
            "(enables dense and hybrid; ~8 ms per passage)"
        ),
    ] = False,
    name: Annotated[
        str, typer.Option(help="index name requests use (default: the directory name)")
    ] = "",
    overwrite: Annotated[bool, typer.Option(help="replace an existing index at --out")] = False,
    chunk_passages: Annotated[int, typer.Option(help="passages held in memory at once")] = 10_000,
) -> None:
    """Index CORPUS into --out (BM25, optionally dense), streaming in bounded memory."""
    from agentrl.search.indexer import build_index

    try:
        manifest = build_index(
            corpus, out, dense=dense, name=name, overwrite=overwrite, chunk_passages=chunk_passages
        )
    except ValueError as exc:
        raise fail(f"error: {exc}") from None
    typer.echo(
        f"indexed {manifest['num_passages']} passages into {out} "
        f"(name {manifest['name']}, version {manifest['version']}, "
        f"methods {', '.join(manifest['methods'])}, {manifest['build_seconds']} s)"
    )


@data_app.command("make-qa-world")
def make_qa_world_command(
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same world")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="directory for corpus.jsonl, train.jsonl, test.jsonl, entities.jsonl, world.json",
        ),
    ],
    num_passages: Annotated[int, typer.Option(help="approximate corpus size")] = 10_000,
    num_questions: Annotated[int, typer.Option(help="questions over both splits")] = 2_000,
    test_fraction: Annotated[
        float, typer.Option(help="share of entities (and questions) in the test split")
    ] = 0.2,
    single_hop_fraction: Annotated[
        float, typer.Option(help="share of one-hop questions; the rest spread over 2..max-hops")
    ] = 0.4,
    max_hops: Annotated[int, typer.Option(help="longest question, in facts (2-4)")] = 4,
    numbered: Annotated[
        bool,
        typer.Option(help="give every entity a catalogue number, in its passages' titles"),
    ] = False,
) -> None:
    """Write a fictional QA world: a corpus only search can answer from, and its questions."""
    from agentrl.search.qa_questions import make_qa_world

    try:
        summary = make_qa_world(
            out,
            seed=seed,
            num_passages=num_passages,
            num_questions=num_questions,
            test_fraction=test_fraction,
            single_hop_fraction=single_hop_fraction,
            max_hops=max_hops,
            numbered=numbered,
        )
    except ValueError as exc:
        raise fail(f"error: {exc}") from None
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"next: agentrl search index {out / 'corpus.jsonl'} --out {out / 'index'}")


def make_search_task_command(
    world: Annotated[Path, typer.Option(help="world directory written by make-qa-world")],
    out: Annotated[Path, typer.Option("--out", help="directory for train/eval/sft JSONL")],
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            "-r",
            envvar="AGENTRL_RECIPE",
            help="recipe whose search service runs the SFT searches",
        ),
    ] = None,
    fact: Annotated[str, typer.Option(help="the fact every question asks for")] = "occupation",
    num_train: Annotated[int, typer.Option(min=1, help="RL prompts (at most)")] = 1000,
    num_eval: Annotated[int, typer.Option(min=1, help="held-out prompts (at most)")] = 100,
    num_sft: Annotated[int, typer.Option(min=1, help="cold-start trajectories")] = 1500,
    num_sft_entities: Annotated[
        int, typer.Option(min=1, help="train entities the SFT questions are about")
    ] = 800,
    tool_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of SFT trajectories that search")
    ] = 0.5,
    refer_by: Annotated[
        str, typer.Option(help="how questions name an entity: number (a --numbered world) or name")
    ] = "number",
    seed: Annotated[int, typer.Option(help="the same seed gives the same files")] = 0,
) -> None:
    """Write the search quickstart's task: one-hop questions over the world, and SFT
    trajectories whose searches the search service really ran (it must be up: `agentrl up`)."""
    import grpc

    from agentrl.common import grpc_client
    from agentrl.common.agent.tools import SearchTool
    from agentrl.common.cli_errors import load_recipe_or_exit, require
    from agentrl.common.config import AgentRLConfig
    from agentrl.search.search_task import make_search_task

    config = load_recipe_or_exit(recipe) if recipe else AgentRLConfig()
    # The SFT trajectories' searches run in the search service: it must answer first.
    require(config, recipe, services=("search",))
    channel = grpc_client.create_channel(config.search.target())
    try:
        summary = make_search_task(
            world,
            out,
            SearchTool(channel, config.rollout.tool_timeout_s),
            fact=fact,
            num_train=num_train,
            num_eval=num_eval,
            num_sft=num_sft,
            num_sft_entities=num_sft_entities,
            tool_fraction=tool_fraction,
            refer_by=refer_by,
            seed=seed,
        )
    except (ValueError, RuntimeError) as exc:
        raise fail(f"error: {exc}") from None
    except grpc.RpcError as exc:  # it went away since the check
        raise fail(
            f"error: the search service at {config.search.target()} stopped answering "
            f"({exc.code().name}: {exc.details()}); start it again with "
            f"`agentrl up -r {recipe or 'RECIPE'} --services search`",
            code=2,
        ) from None
    finally:
        channel.close()
    typer.echo(json.dumps(summary, indent=2))
