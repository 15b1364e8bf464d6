"""How an `agentrl` command ends on a mistake: one paragraph that names what to change, an exit
code, and a traceback only under `agentrl --debug`.

    config = load_recipe_or_exit(recipe)                   # a config error: exit code 1
    require(config, recipe, files=("model.path",))         # a service/file missing: exit code 2
    raise fail(f"{exc}; fix ...")                          # any other known mistake: exit code 1

Exit codes: 1, the recipe or the arguments are wrong (a config error, a bad value); 2, something
the recipe points at is not there: a service that does not answer, a model directory that is
missing (the dry run's checks, libs/common/dry_run.py `preflight`, run before the job starts).
An exception no command explains ends the same way (one paragraph, exit code 1) with a pointer
to `--debug`; `agentrl serve` keeps tracebacks, since its output is a service's log.

The debug switch is an environment variable (AGENTRL_DEBUG) so that what a command starts (a
torchrun relaunch, the local stack's supervisor) inherits it.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

DEBUG_ENV = "AGENTRL_DEBUG"
# Exit code of a command whose services or files are not there (1: the recipe is wrong).
EXIT_NOT_THERE = 2


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def enable_debug() -> None:
    os.environ[DEBUG_ENV] = "1"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` on stderr as one paragraph, as written (never read as markup); under
    --debug, the traceback of the exception being handled first. Returns the Exit to raise."""
    if debug_enabled() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    # soft_wrap: the terminal wraps the paragraph; a log or a pipe gets it on one line.
    Console(stderr=True, soft_wrap=True).print(
        " ".join(message.split()), style="red", markup=False, highlight=False
    )
    return typer.Exit(code)


def config_error_paragraph(recipe: str | Path | None, exc: Any) -> str:
    """A ConfigError as one paragraph: every problem with its setting and source, then where
    the keys are listed."""
    problems = "; ".join(f"{i.path}: {i.message} ({i.source})" for i in exc.issues)
    sections = sorted({i.path.split(".")[0] for i in exc.issues if "." in i.path})
    show = f"`agentrl config show {sections[0]}`" if len(sections) == 1 else "`agentrl config show`"
    return (
        f"{recipe or 'the default config'}: {len(exc.issues)} config error(s): {problems}. "
        f"Fix them in the recipe or its AGENTRL__* variables ({show} lists the keys)."
    )


def load_recipe_or_exit(recipe: str | Path | None):
    """The resolved config of `recipe` (None: defaults and AGENTRL__* variables), or exit 1."""
    from agentrl.common.config import ConfigError, load_config

    try:
        return load_config(recipe)
    except ConfigError as exc:
        raise fail(config_error_paragraph(recipe, exc)) from None


def require(
    config: Any,
    recipe: str | Path | None,
    *,
    data_path: str | Path | None = None,
    services: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    files: tuple[str, ...] = (),
    timeout_s: float = 5.0,
) -> None:
    """Run the dry run's checks a job needs (dry_run.preflight, same arguments); when one fails,
    every failure in one paragraph and exit code 2."""
    from agentrl.common.dry_run import describe_failures, preflight

    failures = preflight(
        config, data_path, services=services, skip=skip, files=files, timeout_s=timeout_s
    )
    if failures:
        raise fail(describe_failures(failures, recipe), code=EXIT_NOT_THERE)


def unexpected(exc: BaseException) -> str:
    """The paragraph for an exception no command explains."""
    return (
        f"agentrl: unexpected {type(exc).__name__}: {exc}. Nothing in this command explains "
        "it yet: run it again as `agentrl --debug ...` for the traceback, and report it with "
        "`agentrl --version`."
    )
