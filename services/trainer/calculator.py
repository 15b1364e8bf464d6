"""The quickstart's task: arithmetic a small model cannot do in its head, with a Python tool.

    agentrl data make-calculator --out data/calculator --recipe recipes/quickstart.yaml

writes three files:

    train.jsonl   RL prompts        {"id", "prompt", "ground_truth", "task_type": "math",
    eval.jsonl    held-out prompts   "tools": ["python"]}  (trainer/data.py's format)
    sft.jsonl     cold-start trajectories {"messages": [...]}  (trainer/sft.py's format)

A problem is the product of two 3-digit numbers (6 digits; one token per digit in
agentrl.common.models tokenizers): far too many carries for a 0.5M-parameter model to get
exactly right without the tool, trivial with it. Train and eval problems are disjoint (their expressions).

The SFT trajectories follow the research's cold-start advice (ALGORITHMS.md §6): they are real
end-to-end episodes, the `<code>` call actually executed by the sandbox service through the
rollout's own tool code and its output spliced in verbatim as the tool message (what an RL
episode would show, trailing newline included: a copy at a fixed offset breaks on one stray
token), and the final answer read off that output. A share
(`tool_fraction`) calls the tool; the rest answer directly, with the right number, as a model
with a working head for arithmetic would. A tiny model imitates the *choice* well and the
mental arithmetic badly, which is the gap RL closes: it learns that calling the tool pays.

What this does NOT cover: word problems, code execution failures in SFT data (every call here
is a valid one-liner; the RL rollouts see the model's own broken calls).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

TASK_TYPE = "math"
TOOLS = ("python",)
# 317**2 > 10**5: every product of two operands in this range has exactly 6 digits.
MIN_OPERAND, MAX_OPERAND = 317, 999
# Sandbox calls in flight while generating SFT data: enough to hide gRPC latency, within the
# local sandbox's default concurrency.
SANDBOX_PARALLELISM = 4
P = TypeVar("P")


@dataclass(frozen=True)
class Problem:
    expression: str
    value: int

    @property
    def prompt(self) -> str:
        return f"What is {self.expression}?"


def make_problem(rng: random.Random) -> Problem:
    """One product of two 3-digit numbers, always 6 digits long.

    Fixed widths are deliberate: every digit sits at the same distance from its copy (prompt ->
    code, tool output -> answer), a copy a 2-layer model learns in a few hundred SFT steps; the
    product itself is far beyond what it can compute.
    """
    a, b = rng.randint(MIN_OPERAND, MAX_OPERAND), rng.randint(MIN_OPERAND, MAX_OPERAND)
    return Problem(f"{a} * {b}", a * b)


def make_problems(num_problems: int, rng: random.Random, exclude: set[str]) -> list[Problem]:
    """`num_problems` distinct problems whose expressions are not in `exclude` (then added)."""
    return distinct(num_problems, rng, exclude, make_problem, lambda p: p.expression)


def distinct(
    count: int,
    rng: random.Random,
    exclude: set[str],
    make: Callable[[random.Random], P],
    key: Callable[[P], str],
) -> list[P]:
    """`count` items of `make(rng)` whose `key` is not in `exclude` (then added): how every
    task keeps its train, eval and SFT splits disjoint."""
    items = []
    while len(items) < count:
        item = make(rng)
        if key(item) not in exclude:
            exclude.add(key(item))
            items.append(item)
    return items


def prompt_row(problem: Problem, split: str, index: int) -> dict[str, Any]:
    return {
        "id": f"calc-{split}-{index}",
        "prompt": problem.prompt,
        "ground_truth": str(problem.value),
        "task_type": TASK_TYPE,
        "tools": list(TOOLS),
    }


def tool_call(problem: Problem) -> str:
    """The assistant's turn that calls the tool (stops on the closing tag, like the rollout)."""
    return f"<code>\nprint({problem.expression})\n</code>"


def direct_answer(value: str) -> str:
    return f"<answer>{value}</answer>"


def tool_episode(
    prompt: str,
    call: str,
    tool_format: str,
    expected: str,
    answer: Callable[[str], str],
    sandbox: Any,
) -> dict[str, Any]:
    """An episode that calls the tool (`call`, in `tool_format`). The call goes through the
    rollout's own `SandboxTool`, in a session of its own as an RL episode's calls are
    (agent/loop.py: opened by the first call, closed at the end), so the tool message is byte
    for byte the observation an RL episode shows (stdout with its newline); the final turn is
    `answer` of what the program printed, which must be `expected`. Shared by every task whose
    SFT data is executed (this one, trainer/word_problems.py)."""
    from agentrl.common.agent.tools import SandboxTool
    from agentrl.common.tool_formats import get_format
    from agentrl.proto.core.v1 import trajectory_pb2

    parsed = get_format(tool_format).parse(call)
    tool, session_id = SandboxTool(sandbox), f"sft-{uuid.uuid4().hex[:12]}"

    async def episode():
        try:
            return await tool.run(parsed, session_id=session_id)
        finally:
            await tool.close_session(session_id)

    outcome = asyncio.run(episode())
    if outcome.status != trajectory_pb2.TOOL_CALL_STATUS_OK or outcome.output.strip() != expected:
        # SandboxTool turns an unreachable service into an observation: say what to do here.
        raise RuntimeError(
            f"the sandbox answered {outcome.output.strip()!r} (status "
            f"{outcome.status}) for {parsed.arguments!r}, expected "
            f"{expected}; is the sandbox service up (`agentrl up "
            "--services sandbox`) and healthy?"
        )
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": call},
            {"role": "tool", "content": outcome.output},
            {"role": "assistant", "content": answer(outcome.output.strip())},
        ],
        "tool_calls": 1,
    }


def direct_episode(prompt: str, final_turn: str) -> dict[str, Any]:
    """An episode answered without the tool."""
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": final_turn},
        ],
        "tool_calls": 0,
    }


def executed_trajectory(problem: Problem, sandbox: Any) -> dict[str, Any]:
    return tool_episode(
        problem.prompt, tool_call(problem), "code_tags", str(problem.value), direct_answer, sandbox
    )


def direct_trajectory(problem: Problem) -> dict[str, Any]:
    return direct_episode(problem.prompt, direct_answer(str(problem.value)))


def sft_trajectories(
    problems: list[P],
    tool_fraction: float,
    rng: random.Random,
    executed: Callable[[P], dict[str, Any]],
    direct: Callable[[P], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Cold-start episodes: `tool_fraction` of them `executed` (through the sandbox, a few in
    flight), the rest answered `direct`ly; order as `problems`."""
    if not 0.0 <= tool_fraction <= 1.0:
        raise ValueError(f"tool_fraction must be in [0, 1], got {tool_fraction}")
    uses_tool = [rng.random() < tool_fraction for _ in problems]
    with ThreadPoolExecutor(SANDBOX_PARALLELISM) as pool:
        executed_rows = pool.map(
            executed, [p for p, tool in zip(problems, uses_tool, strict=True) if tool]
        )
        executed_rows = iter(list(executed_rows))
    return [
        next(executed_rows) if tool else direct(problem)
        for problem, tool in zip(problems, uses_tool, strict=True)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_task(
    out_dir: str | Path,
    train: list[dict[str, Any]],
    held_out: list[dict[str, Any]],
    trajectories: list[dict[str, Any]],
    seed: int,
) -> dict[str, Any]:
    """Write a task's train.jsonl, eval.jsonl and sft.jsonl to `out_dir`; returns a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", held_out)
    write_jsonl(out / "sft.jsonl", trajectories)
    num_tool = sum(t["tool_calls"] for t in trajectories)
    return {
        "out_dir": str(out),
        "num_train": len(train),
        "num_eval": len(held_out),
        "num_sft": len(trajectories),
        "num_sft_with_tool": num_tool,
        "num_sft_direct": len(trajectories) - num_tool,
        "seed": seed,
    }


@dataclass(frozen=True)
class ExecutedTask(Generic[P]):
    """A task whose SFT tool calls the sandbox executes, as `make_task_data` draws it: its
    problems (`make_problems(count, rng, exclude)`, distinct), their prompt rows
    (`prompt_row(problem, split, index)`) and their two kinds of SFT episode."""

    seed_prefix: str
    """Seeds the task's draws (`{seed_prefix}:{seed}`): the same seed, the same files."""
    make_problems: Callable[[int, random.Random, set[str]], list[P]]
    prompt_row: Callable[[P, str, int], dict[str, Any]]
    executed_trajectory: Callable[[P, Any], dict[str, Any]]
    direct_trajectory: Callable[[P], dict[str, Any]]


def make_task_data(
    task: ExecutedTask[P],
    out_dir: str | Path,
    sandbox: Any,
    *,
    num_sft: int,
    num_train: int = 2000,
    num_eval: int = 100,
    tool_fraction: float = 0.4,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `task`'s train.jsonl, eval.jsonl and sft.jsonl to `out_dir`; returns a summary.
    Eval, train and SFT problems are drawn in that order from one seeded stream, disjoint; the
    SFT calls run in `sandbox`. Shared by every executed task (this one,
    trainer/word_problems.py)."""
    for name, count in (("num_train", num_train), ("num_eval", num_eval), ("num_sft", num_sft)):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    rng = random.Random(f"{task.seed_prefix}:{seed}")
    seen: set[str] = set()
    eval_problems = task.make_problems(num_eval, rng, seen)
    train_problems = task.make_problems(num_train, rng, seen)
    sft_problems = task.make_problems(num_sft, rng, seen)
    trajectories = sft_trajectories(
        sft_problems,
        tool_fraction,
        rng,
        lambda problem: task.executed_trajectory(problem, sandbox),
        task.direct_trajectory,
    )
    train = [task.prompt_row(p, "train", i) for i, p in enumerate(train_problems)]
    held_out = [task.prompt_row(p, "eval", i) for i, p in enumerate(eval_problems)]
    return write_task(out_dir, train, held_out, trajectories, seed)


CALCULATOR = ExecutedTask(
    "agentrl-calculator", make_problems, prompt_row, executed_trajectory, direct_trajectory
)


def make_calculator_data(
    out_dir: str | Path, sandbox: Any, *, num_sft: int = 1500, **options: Any
) -> dict[str, Any]:
    """The quickstart's train.jsonl, eval.jsonl and sft.jsonl in `out_dir`; returns a summary.
    `options`: make_task_data's (sizes, tool_fraction, seed)."""
    return make_task_data(CALCULATOR, out_dir, sandbox, num_sft=num_sft, **options)
