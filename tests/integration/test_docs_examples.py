"""Every example command in README.md and docs/ is checked, so the docs cannot rot.

A fenced block preceded by `<!-- docs-test: run -->` is run as written: bash (`-euo pipefail`)
in a scratch directory that links the repository's `.venv` and `recipes`, with `.venv/bin` on
PATH, and each service port of the config's defaults that the block names moved to a free one
(the block's text and the matching AGENTRL__<SECTION>__<GRPC|HTTP>_PORT), so a run never meets
another stack on this machine. Mark a block so only when it takes seconds.

Every other example (shell blocks, and `agentrl` lines in plain or indented code blocks) is
parse-checked: bash syntax, each `agentrl` command line parsed by the real CLI's parser (every
sub-command and option exists, values convert; placeholders such as N and RECIPE stand for a
value, `[...]` for an optional part), each `make` target exists, and each path into the
repository that a command names exists. What is NOT checked for those: that the command
succeeds (they need minutes, a GPU, a cluster or a running stack).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUN_MARKER = "<!-- docs-test: run -->"
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
# Placeholders the docs write for a value, and what the parser gets instead (an int for N, K).
PLACEHOLDER_VALUES = {"N": "1", "K": "1"}
# A whole block run here may take this long (the search quick start: ~10 s).
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    language: str
    text: str
    run: bool

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of `doc`, and its indented code lines that are `agentrl` commands."""
    found: list[Block] = []
    lines = doc.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^(\s*)(```+)\s*(\S*)", lines[index])
        if fence:
            start = index
            index += 1
            body = []
            while index < len(lines) and not lines[index].strip().startswith(fence.group(2)):
                body.append(lines[index][len(fence.group(1)) :])
                index += 1
            marked = start > 0 and lines[start - 1].strip() == RUN_MARKER
            found.append(Block(doc, start + 1, fence.group(3), "\n".join(body), marked))
        elif re.match(r"^ {4}\S", lines[index]) and is_agentrl(lines[index].strip()):
            found.append(Block(doc, index + 1, "", lines[index].strip(), False))
        index += 1
    return found


def is_agentrl(line: str) -> bool:
    words = line.split()
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    return bool(words) and (words[0] == "agentrl" or words[0].endswith("/agentrl"))


def command_lines(text: str, agentrl_only: bool = False) -> list[str]:
    """Commands of a shell text: continuation lines joined, comments dropped, `&&`/`;`/`|`/`&`
    chains split; `[...]` optional parts kept without their brackets. `agentrl_only`: only the
    lines that are `agentrl` commands (a plain block mixes them with output)."""
    commands = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#") or (agentrl_only and not is_agentrl(line)):
            continue
        words = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "|", "&"):
                if current:
                    commands.append(shlex.join(current))
                current = []
            else:
                current.append(word.rstrip(";&"))
    return commands


ALL_BLOCKS = [b for doc in DOCS for b in blocks(doc)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.run]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in SHELL_LANGUAGES and not b.run]
AGENTRL_COMMANDS = [
    (block, command)
    for block in ALL_BLOCKS
    if block.language in (*SHELL_LANGUAGES, "")  # json, yaml, python blocks hold no commands
    for command in command_lines(block.text, agentrl_only=not block.language)
    if is_agentrl(command)
]


def test_the_docs_have_examples_of_each_kind():
    # The extraction itself must keep finding what the docs hold.
    assert len(RUN_BLOCKS) >= 2, [str(b) for b in RUN_BLOCKS]
    assert len(AGENTRL_COMMANDS) >= 25
    assert {str(b.doc.name) for b, _ in AGENTRL_COMMANDS} >= {"README.md", "search.md"}
    assert len(INLINE_REFERENCES) >= 50


def parse_agentrl(command: str, reference: bool = False) -> None:
    """Parse `command` with the real CLI's click tree without running it (raises on a mistake).
    `reference`: a mention in prose (`agentrl train`), which may leave out required values:
    only its sub-commands and options must exist."""
    from agentrl.common.cli import app

    words = shlex.split(command)
    while re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    args = [PLACEHOLDER_VALUES.get(w, w) for w in words[1:]]
    if "--help" in args or "--version" in args:
        args = [a for a in args if a not in ("--help", "--version")] + ["--help"]
    # typer builds the tree on click (or, from 0.2x on, on its own copy of it): the calls
    # below are click's API, whichever it is.
    command_obj = typer.main.get_command(app)
    options = {"--help"}
    context = command_obj.make_context("agentrl", args, resilient_parsing=reference)
    while True:
        options |= {o for p in command_obj.params for o in (*p.opts, *p.secondary_opts)}
        rest = [*getattr(context, "_protected_args", []), *context.args]
        if not hasattr(command_obj, "resolve_command") or not rest:  # not a group, or its end
            break
        name, command_obj, rest_after = command_obj.resolve_command(context, rest)
        if command_obj is None:  # resilient parsing returns what a strict parse refuses
            context.fail(f"no such command {rest[0]!r}")
        context = command_obj.make_context(
            name, rest_after, parent=context, resilient_parsing=reference
        )
    # Resilient parsing lets an unknown option by: each one named must exist somewhere.
    unknown = [a for a in args if a.startswith("-") and a.split("=")[0] not in options]
    if unknown:
        context.fail(f"no such option {unknown[0]!r}")


def inline_references() -> list[tuple[str, str]]:
    """`agentrl ...` code spans in the docs' prose: (where, command)."""
    found = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for span in re.findall(r"(?<!`)`((?:\.venv/bin/)?agentrl [^`<|]+)`(?!`)", line):
                found.append((f"{doc.relative_to(REPO)}:{number}", span))
    return found


INLINE_REFERENCES = inline_references()


@pytest.mark.parametrize(("where", "command"), INLINE_REFERENCES)
def test_every_agentrl_mentioned_in_prose_exists(where, command):
    try:
        parse_agentrl(command, reference=True)
    except typer.Exit as exc:
        assert exc.exit_code == 0, f"{where}: {command}"
    except Exception as exc:
        if not hasattr(exc, "format_message"):
            raise
        pytest.fail(f"{where}: `{command}` names what the CLI lacks: {exc.format_message()}")


@pytest.mark.parametrize(
    ("block", "command"), AGENTRL_COMMANDS, ids=[f"{b}:{c[:60]}" for b, c in AGENTRL_COMMANDS]
)
def test_every_agentrl_example_parses(block, command):
    try:
        parse_agentrl(command)
    except typer.Exit as exc:  # --help printed and exited: the command exists
        assert exc.exit_code == 0, f"{block}: {command}"
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # not a usage error of click's: a bug here
            raise
        pytest.fail(f"{block}: `{command}` does not parse: {exc.format_message()}")


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_every_other_shell_example_is_valid_and_names_what_exists(block):
    syntax = subprocess.run(
        ["bash", "-n"], check=False, input=block.text, capture_output=True, text=True
    )
    assert syntax.returncode == 0, f"{block}: {syntax.stderr}"
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for command in command_lines(block.text):
        words = shlex.split(command)
        if words[0] == "make":  # its targets; NAME=value words set make variables
            named = {w for w in words[1:] if "=" not in w}
            assert named <= targets, f"{block}: `{command}`: no such make target"
        for word in words[1:]:
            path = word.split("=", 1)[-1]
            first = path.split("/", 1)[0]
            if "/" in path and first and (REPO / first).is_dir() and first not in ("data", "runs"):
                assert (REPO / path).exists(), f"{block}: `{command}` names {path}, not here"


def default_ports() -> dict[int, str]:
    """Each service's default gRPC and HTTP port -> the variable that moves it."""
    from agentrl.common.config import AgentRLConfig

    config = AgentRLConfig()
    ports = {}
    for section in ("sandbox", "reward", "search", "rollout", "trainer"):
        for key in ("grpc_port", "http_port"):
            port = getattr(getattr(config, section), key, None)
            if port:
                ports[port] = f"AGENTRL__{section.upper()}__{key.upper()}"
    return ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # each block takes seconds: the search quick start indexes 10,000 passages
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=str)
def test_every_runnable_example_runs(block, tmp_path):
    for name in (".venv", "recipes"):
        (tmp_path / name).symlink_to(REPO / name)
    text, env = block.text, {**os.environ, "COLUMNS": "120"}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    for port, variable in default_ports().items():
        if re.search(rf"\b{port}\b", text):
            moved = free_port()
            text = re.sub(rf"\b{port}\b", str(moved), text)
            env[variable] = str(moved)
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        try:  # what the block left in the background (a service it started)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    assert process.returncode == 0, f"{block} failed:\n{output[-6000:]}"
