"""The SmolLM2 recipe's word-problem task: stories and values, disjoint splits, executed Hermes
SFT trajectories that render as the rollout appends them.

The sandbox is a stand-in that evaluates the one-line programs (pure logic of the generator);
the real sandbox runs the same calls in tests/integration/test_smollm2_chat_template.py.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from agentrl.common.tool_formats import get_format
from agentrl.sandbox.interface import ExecutionResult, Status
from agentrl.trainer import word_problems
from agentrl.trainer.rendering import episode_segments


class EvaluatingSandbox:
    """Runs `print(<digits and + - *>)` as Python would; `wrong` adds one to every value."""

    def __init__(self, wrong: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.closed: list[str] = []
        self.wrong = wrong

    def execute(self, code: str, **fields) -> ExecutionResult:
        self.calls.append((code, fields.get("session_id", "")))
        expression = re.fullmatch(r"print\(([\d +*-]+)\)", code).group(1)
        value = eval(expression, {"__builtins__": {}}) + self.wrong
        return ExecutionResult(Status.OK, exit_code=0, stdout=f"{value}\n")

    def close_session(self, session_id: str) -> bool:
        self.closed.append(session_id)
        return True


def test_every_story_names_its_numbers_and_has_a_positive_value() -> None:
    rng = random.Random(0)
    seen_templates = set()
    for _ in range(600):
        problem = word_problems.make_problem(rng)
        numbers = re.findall(r"\d+", problem.expression)
        # Every operand of the expression appears in the story, in the story's order or not.
        assert all(re.search(rf"\b{n}\b", problem.story) for n in numbers)
        assert 2 <= problem.expression.count(" ") // 2 <= 3  # two or three operations
        assert problem.value == eval(problem.expression) > 0
        assert len(str(problem.value)) <= 6
        assert problem.prompt.startswith(problem.story) and problem.prompt.endswith(
            word_problems.INSTRUCTION
        )
        seen_templates.add(problem.story.split(" ")[1])
    assert len(seen_templates) == len(word_problems.TEMPLATES)


def test_files_have_disjoint_splits_and_executed_hermes_calls(tmp_path) -> None:
    sandbox = EvaluatingSandbox()
    summary = word_problems.make_word_problem_data(
        tmp_path, sandbox, num_train=200, num_eval=40, num_sft=100, tool_fraction=0.5, seed=1
    )
    rows = {
        name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").open()]
        for name in ("train", "eval", "sft")
    }
    assert [len(rows[n]) for n in ("train", "eval", "sft")] == [200, 40, 100]
    stories = {n: {r["prompt"] for r in rows[n]} for n in ("train", "eval")}
    sft_stories = {r["messages"][0]["content"] for r in rows["sft"]}
    assert not stories["train"] & stories["eval"] and not sft_stories & (
        stories["train"] | stories["eval"]
    )
    assert all(r["task_type"] == "math" and r["tools"] == ["python"] for r in rows["train"])
    with_tool = [r for r in rows["sft"] if r["tool_calls"] == 1]
    assert summary["num_sft_with_tool"] == len(with_tool) == len(sandbox.calls)
    assert 30 <= len(with_tool) <= 70
    hermes = get_format("hermes")
    for row in with_tool:
        _, call, tool, final = row["messages"]
        parsed = hermes.parse(call["content"])
        assert parsed.tool == "python" and not parsed.error
        code = json.loads(parsed.arguments)["code"]
        assert (code, tool["content"]) in {(c, f"{eval(c[6:-1])}\n") for c, _ in sandbox.calls}
        assert final["content"] == f"The answer is <answer>{tool['content'].strip()}</answer>"
    # Each call ran in a session of its own, closed afterwards.
    sessions = [s for _, s in sandbox.calls]
    assert len(set(sessions)) == len(sessions) and sorted(sandbox.closed) == sorted(sessions)
    # The same seed gives the same files.
    again = tmp_path / "again"
    word_problems.make_word_problem_data(
        again,
        EvaluatingSandbox(),
        num_train=200,
        num_eval=40,
        num_sft=100,
        tool_fraction=0.5,
        seed=1,
    )
    for name in ("train", "eval", "sft"):
        assert (again / f"{name}.jsonl").read_text() == (tmp_path / f"{name}.jsonl").read_text()


def test_an_sft_trajectory_renders_as_the_rollout_appends_it() -> None:
    """Prompt, call, `<tool_response>` observation, answer: the segments SFT trains on are the
    texts an RL episode has (the observation wrapped by the Hermes format, the rollout's)."""
    from agentrl.common.models import train_tokenizer

    problem = word_problems.make_problem(random.Random(5))
    row = word_problems.executed_trajectory(problem, EvaluatingSandbox())
    tokenizer = train_tokenizer([problem.prompt, json.dumps(row)] * 5, 400)
    segments = episode_segments(row["messages"], tokenizer, "hermes")
    assert [s.role for s in segments] == ["prompt", "assistant", "observation", "assistant"]
    assert segments[2].text == f"\n<tool_response>\n{problem.value}\n\n</tool_response>\n"


def test_a_sandbox_that_answers_wrong_is_an_error_that_says_what_to_check() -> None:
    problem = word_problems.make_problem(random.Random(2))
    with pytest.raises(RuntimeError, match="is the sandbox service up"):
        word_problems.executed_trajectory(problem, EvaluatingSandbox(wrong=True))
