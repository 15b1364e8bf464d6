"""The SmolLM2 recipe's task: multi-step arithmetic word problems, solved with a Python tool
called in Hermes style (recipes/smollm2_word_problems.yaml, docs/recipes/smollm2_word_problems.md).

    agentrl data make-word-problems --recipe recipes/smollm2_word_problems.yaml --out data/word_problems

writes train.jsonl and eval.jsonl (RL and held-out prompts, trainer/data.py's format) and
sft.jsonl (cold-start trajectories, trainer/sft.py's format), like `make-calculator`.

A problem is a short story with two or three operations on 2- and 3-digit numbers ("A shop
packs 37 boxes of 24 pens and has 156 loose pens..."): a 135M model reads the story and copies
the numbers well, but multiplies 2-digit numbers in its head badly. The tool call is the story
as one expression, `{"name": "python", "arguments": {"code": "print(37 * 24 + 156)"}}`, in the
Hermes `<tool_call>` tags that a ChatML template carries as assistant text.

SFT trajectories are executed end to end as in trainer/calculator.py (the call runs in the
sandbox service through the rollout's own SandboxTool, its output spliced in verbatim); a share
(`tool_fraction`) calls the tool, the rest answer directly and correctly, so the cold start
teaches both behaviours and RL learns which one pays. Train, eval and SFT problems are disjoint
(their stories).

What this does NOT cover: division, problems whose wording must be inferred (every story names
each operation plainly), and more than one tool call per problem.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.trainer.calculator import (
    ExecutedTask,
    direct_episode,
    distinct,
    make_task_data,
    tool_episode,
)

TASK_TYPE = "math"
TOOLS = ("python",)
TOOL_FORMAT = "hermes"
# Short on purpose (every prompt token costs compute in each forward pass on 2 cores): the SFT
# cold start teaches the exact form of the call.
INSTRUCTION = "Use the python tool."

FACTOR = (12, 99)
NUMBER = (100, 999)
# (story, expression, ranges): {a} and {b} are 2-digit factors; {c} and {d} 3-digit numbers
# unless the template says otherwise (a product of three stays within 6 digits).
TEMPLATES: tuple[tuple[str, str, dict[str, tuple[int, int]]], ...] = (
    (
        (
            "A shop packs {a} boxes of {b} pens and has {c} loose pens. "
            "How many pens does it have in all?"
        ),
        "{a} * {b} + {c}",
        {},
    ),
    (
        (
            "A farm has {a} rows of {b} apple trees. A storm knocks down {c} trees. "
            "How many trees are left?"
        ),
        "{a} * {b} - {c}",
        {},
    ),
    (
        (
            "A school orders {a} packs of {b} pencils and {c} packs of {d} pens. "
            "How many pencils and pens does it order?"
        ),
        "{a} * {b} + {c} * {d}",
        {"c": FACTOR, "d": FACTOR},
    ),
    (
        (
            "Mia earns {a} dollars a week for {b} weeks and then spends {c} dollars. "
            "How many dollars does she have left?"
        ),
        "{a} * {b} - {c}",
        {},
    ),
    (
        (
            "A bus makes {a} trips a day for {b} days and carries {c} people on each trip. "
            "How many people does it carry?"
        ),
        "{a} * {b} * {c}",
        {"c": (12, 60)},
    ),
    (
        (
            "A library has {c} books. It buys {a} boxes of {b} books and gives away {d} books. "
            "How many books does it have now?"
        ),
        "{c} + {a} * {b} - {d}",
        {},
    ),
)


@dataclass(frozen=True)
class WordProblem:
    story: str
    expression: str
    value: int

    @property
    def prompt(self) -> str:
        return f"{self.story} {INSTRUCTION}"


def make_problem(rng: random.Random) -> WordProblem:
    """One story with its numbers drawn; redrawn until the value is positive (a subtraction
    can exceed a small product)."""
    while True:
        story, expression, ranges = rng.choice(TEMPLATES)
        limits = {"a": FACTOR, "b": FACTOR, "c": NUMBER, "d": NUMBER} | ranges
        numbers = {name: rng.randint(*limit) for name, limit in limits.items()}
        code = expression.format(**numbers)
        value = eval(code, {"__builtins__": {}})  # our own digits and operators only
        if value > 0:
            return WordProblem(story.format(**numbers), code, value)


def make_problems(count: int, rng: random.Random, exclude: set[str]) -> list[WordProblem]:
    """`count` problems whose stories are not in `exclude` (then added)."""
    return distinct(count, rng, exclude, make_problem, lambda p: p.story)


def prompt_row(problem: WordProblem, split: str, index: int) -> dict[str, Any]:
    return {
        "id": f"words-{split}-{index}",
        "prompt": problem.prompt,
        "ground_truth": str(problem.value),
        "task_type": TASK_TYPE,
        "tools": list(TOOLS),
    }


def tool_call(problem: WordProblem) -> str:
    """The assistant's turn that calls the tool, ending on the closing tag as a rollout does."""
    call = {"name": "python", "arguments": {"code": f"print({problem.expression})"}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def answer(value: str) -> str:
    return f"The answer is <answer>{value}</answer>"


def executed_trajectory(problem: WordProblem, sandbox: Any) -> dict[str, Any]:
    """An episode whose call ran through the rollout's SandboxTool in a session of its own
    (calculator.tool_episode); the answer is what the program printed."""
    return tool_episode(
        problem.prompt, tool_call(problem), TOOL_FORMAT, str(problem.value), answer, sandbox
    )


def direct_trajectory(problem: WordProblem) -> dict[str, Any]:
    return direct_episode(problem.prompt, answer(str(problem.value)))


WORD_PROBLEMS = ExecutedTask(
    "agentrl-word-problems", make_problems, prompt_row, executed_trajectory, direct_trajectory
)


def make_word_problem_data(
    out_dir: str | Path, sandbox: Any, *, num_sft: int = 400, **options: Any
) -> dict[str, Any]:
    """The recipe's train.jsonl, eval.jsonl and sft.jsonl in `out_dir`; returns a summary.
    `options`: calculator.make_task_data's (sizes, tool_fraction, seed)."""
    return make_task_data(WORD_PROBLEMS, out_dir, sandbox, num_sft=num_sft, **options)
