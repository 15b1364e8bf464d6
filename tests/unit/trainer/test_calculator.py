"""The quickstart's calculator task: problem shape, splits, SFT trajectories, run-dir samples.

The sandbox here is a stand-in that evaluates the one-line programs (pure logic of the data
generator); the real sandbox runs them in tests/integration/test_quickstart.py.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from agentrl.common.models import train_tokenizer
from agentrl.proto.core.v1 import trajectory_pb2
from agentrl.sandbox.interface import ExecutionResult, Status
from agentrl.trainer import calculator
from agentrl.trainer.rendering import episode_segments, tokenize_segments
from agentrl.trainer.run_files import trajectory_segments


class PrintingSandbox:
    """Runs `print(a * b)` the way Python would: the value and a newline on stdout."""

    def __init__(self, wrong: bool = False) -> None:
        self.calls: list[str] = []
        self.sessions: list[str] = []
        self.closed: list[str] = []
        self.wrong = wrong

    def execute(self, code: str, **fields) -> ExecutionResult:
        self.calls.append(code)
        self.sessions.append(fields.get("session_id", ""))
        a, b = map(int, re.fullmatch(r"print\((\d+) \* (\d+)\)", code).groups())
        return ExecutionResult(Status.OK, exit_code=0, stdout=f"{a * b + self.wrong}\n")

    def close_session(self, session_id: str) -> bool:
        self.closed.append(session_id)
        return True


def test_every_problem_is_a_product_of_two_3_digit_numbers_with_6_digits() -> None:
    rng = random.Random(0)
    for _ in range(500):
        problem = calculator.make_problem(rng)
        a, b = map(int, problem.expression.split(" * "))
        assert 100 <= a <= 999 and 100 <= b <= 999
        assert problem.value == a * b and len(str(problem.value)) == 6


def test_files_are_written_with_disjoint_splits_and_the_tool_share(tmp_path) -> None:
    sandbox = PrintingSandbox()
    summary = calculator.make_calculator_data(
        tmp_path, sandbox, num_train=300, num_eval=50, num_sft=400, tool_fraction=0.25, seed=3
    )
    rows = {
        name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").open()]
        for name in ("train", "eval", "sft")
    }
    train = {r["prompt"] for r in rows["train"]}
    held_out = {r["prompt"] for r in rows["eval"]}
    sft = {t["messages"][0]["content"] for t in rows["sft"]}
    assert len(train) == 300 and len(held_out) == 50 and len(sft) == 400
    assert not (train & held_out) and not (held_out & sft)
    assert all(r["task_type"] == "math" and r["tools"] == ["python"] for r in rows["train"])
    assert summary["num_sft_with_tool"] == len(sandbox.calls)
    # One sandbox session per episode, as in the rollout, each closed after its episode.
    assert len(set(sandbox.sessions)) == len(sandbox.calls) and all(sandbox.sessions)
    assert sorted(sandbox.closed) == sorted(sandbox.sessions)
    assert 0.15 < summary["num_sft_with_tool"] / 400 < 0.35


def test_a_tool_trajectory_carries_the_output_verbatim_and_answers_from_it() -> None:
    problem = calculator.Problem("841 * 350", 294350)
    trajectory = calculator.executed_trajectory(problem, PrintingSandbox())
    _user, call, tool, answer = trajectory["messages"]
    assert call["content"] == "<code>\nprint(841 * 350)\n</code>"
    assert tool["content"] == "294350\n"  # the newline print() writes, as the rollout shows it
    assert answer["content"] == "<answer>294350</answer>"


def test_a_sandbox_that_answers_wrong_stops_the_generator() -> None:
    with pytest.raises(RuntimeError, match="expected 294350"):
        calculator.executed_trajectory(
            calculator.Problem("841 * 350", 294350), PrintingSandbox(wrong=True)
        )


def test_samples_decode_an_episode_into_model_and_tool_segments() -> None:
    texts = calculator.direct_answer("1") + "What is 841 * 350? print(841 * 350) 294350"
    tokenizer = train_tokenizer([texts] * 10, vocab_size=300)
    messages = calculator.executed_trajectory(
        calculator.Problem("841 * 350", 294350), PrintingSandbox()
    )["messages"]
    segments = episode_segments(messages, tokenizer, "code_tags")
    token_ids, loss_mask = tokenize_segments(segments, tokenizer)
    prompt_length = len(tokenizer(segments[0].text, add_special_tokens=False).input_ids)
    trajectory = trajectory_pb2.Trajectory(
        token_ids=token_ids, loss_mask=loss_mask, prompt_length=prompt_length
    )
    decoded = trajectory_segments(trajectory, tokenizer)
    assert [s["role"] for s in decoded] == ["model", "tool", "model"]
    assert decoded[0]["text"] == "<code>\nprint(841 * 350)\n</code>"
    assert decoded[1]["text"] == "\n<output>\n294350\n\n</output>\n"
    assert decoded[2]["text"] == "<answer>294350</answer>"  # EOS is special: skipped
