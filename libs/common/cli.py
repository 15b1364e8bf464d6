"""The `agentrl` command line: one entry for every job and service of AgentRL.

Each command parses its arguments, then imports what it needs, so `agentrl --help` stays fast.
Only commands that work are registered here; a service joins when its issue lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="AgentRL: train tool-using LLM agents with RL.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Check and explain configuration recipes.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
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
    section: Annotated[str, typer.Argument(help="a section, e.g. sandbox; empty: all")] = "",
) -> None:
    """List every config field with its type, default and meaning."""
    from agentrl.common.config import AgentRLConfig

    table = Table("field", "type", "default", "meaning", show_lines=False)
    sections = AgentRLConfig.model_fields
    if section and section not in sections:
        err_console.print(f"[red]unknown section {section!r}; one of: {', '.join(sections)}[/]")
        raise typer.Exit(code=1)
    for name, field in sections.items():
        if section and name != section:
            continue
        for key, sub in field.annotation.model_fields.items():
            annotation = str(sub.annotation).replace("typing.", "").replace("<class '", "")
            table.add_row(f"{name}.{key}", annotation.rstrip("'>"), repr(sub.default),
                          (sub.description or "").replace("\n", " "))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
