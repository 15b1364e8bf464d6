"""The search quickstart's task generator (search_task.py) on a small generated world, with the
search tool answered in process by the world's BM25 index (the same `format_passages` text the
rollout's SearchTool shows)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agentrl.common.agent.tools import ToolOutcome, format_passages
from agentrl.common.tool_formats import ParsedCall
from agentrl.proto.core.v1 import trajectory_pb2
from agentrl.reward.qa_verifier import verify_qa
from agentrl.reward.verifier import VerifyInput
from agentrl.search.retriever import SearchIndex
from agentrl.search.search_task import (
    direct_trajectory,
    load_entities,
    make_search_task,
    one_hop_questions,
    sft_trajectories,
)

OK = trajectory_pb2.TOOL_CALL_STATUS_OK


class IndexSearchTool:
    """The rollout's SearchTool contract over an in-process index (top-1, as the recipe)."""

    def __init__(self, index_dir: Path, top_k: int = 1) -> None:
        self.index = SearchIndex(index_dir)
        self.top_k = top_k
        self.queries: list[str] = []

    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
        self.queries.append(call.arguments)
        hits = self.index.retrieve([call.arguments], self.top_k, "bm25")[0]
        return ToolOutcome(OK, format_passages([hit.passage for hit in hits]))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_questions_ask_each_entity_of_a_split_for_the_fact(numbered_world: Path) -> None:
    entities = load_entities(numbered_world)
    corpus = {row["id"]: row for row in read_jsonl(numbered_world / "corpus.jsonl")}
    questions = one_hop_questions(entities, "occupation", "test")
    people = [e for e in entities.values() if e.kind == "person" and e.split == "test"]
    assert [q.entity_id for q in questions] == [e.id for e in people]
    for q in questions:
        entity = entities[q.entity_id]
        assert q.question == f"What was the profession of person no. {entity.number}?"
        passage = corpus[entity.fact_passage["occupation"]]
        assert f"was a {q.answers[0]}." in passage["text"]
        assert passage["title"] == f"{entity.name} (no. {entity.number})"
    # Every question has the same width: five digits, the one part that differs.
    assert {len(q.question) for q in questions} == {
        len("What was the profession of person no. 12345?")
    }
    with pytest.raises(ValueError, match="unknown fact"):
        one_hop_questions(entities, "shoe_size", "train")


def test_questions_name_the_entity_when_asked_to(qa_world: Path) -> None:
    entities = load_entities(qa_world)
    questions = one_hop_questions(entities, "occupation", "test", refer_by="name")
    assert [q.question for q in questions] == [
        f"What was the profession of {entities[q.entity_id].name}?" for q in questions
    ]
    with pytest.raises(ValueError, match="--numbered"):
        one_hop_questions(entities, "occupation", "test")  # this world has no numbers
    with pytest.raises(ValueError, match="refer_by"):
        one_hop_questions(entities, "occupation", "test", refer_by="nickname")


def test_task_files_are_entity_disjoint_and_sft_searches_are_executed(
    numbered_world: Path, numbered_index_dir: Path, tmp_path: Path
) -> None:
    tool = IndexSearchTool(numbered_index_dir)
    summary = make_search_task(
        numbered_world,
        tmp_path,
        tool,
        num_train=50,
        num_eval=20,
        num_sft=200,
        num_sft_entities=60,
        tool_fraction=0.5,
        seed=3,
    )
    train, evaluation = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "eval.jsonl")
    sft = read_jsonl(tmp_path / "sft.jsonl")
    assert (len(train), len(evaluation), len(sft)) == (50, 20, 200)
    entities = load_entities(numbered_world)
    assert {entities[r["entity_id"]].split for r in evaluation} == {"test"}
    assert {entities[r["entity_id"]].split for r in train} == {"train"}
    sft_prompts = {t["messages"][0]["content"] for t in sft}
    assert not sft_prompts & {r["prompt"] for r in train + evaluation}
    assert all(r["task_type"] == "qa" and r["tools"] == ["search"] for r in train + evaluation)
    searched = [t for t in sft if t["tool_calls"]]
    assert summary["num_sft_with_search"] == len(searched) == len(tool.queries)
    assert 60 <= len(searched) <= 140  # about half of 200
    assert summary["num_sft_missed"] == 0  # the number finds the fact's passage every time
    for t in searched:
        user, call, observation, answer = (m["content"] for m in t["messages"])
        assert call == f"<search>{user}</search>"
        hits = tool.index.retrieve([user], 1, "bm25")[0]
        assert observation == format_passages([hits[0].passage])  # verbatim, as RL shows it
        word = answer.removeprefix("<answer> ").removesuffix("</answer>")
        assert f" {word}." in observation  # copied from the top passage, space included


def test_answers_score_correct_under_the_qa_verifier(numbered_world: Path) -> None:
    questions = one_hop_questions(load_entities(numbered_world), "birth_year", "train")[:5]
    row = questions[0].row("x")
    for q in questions:
        reply = direct_trajectory(q)["messages"][-1]["content"]
        verdict = verify_qa(VerifyInput("qa", reply, q.row("x")["ground_truth"]), "em", True)
        assert verdict.score == 1.0, verdict.reason
    assert json.loads(row["ground_truth"]) == {"answers": list(questions[0].answers)}


def test_same_seed_same_files(
    numbered_world: Path, numbered_index_dir: Path, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        make_search_task(
            numbered_world,
            tmp_path / name,
            IndexSearchTool(numbered_index_dir),
            num_train=10,
            num_eval=5,
            num_sft=30,
            num_sft_entities=20,
            seed=1,
        )
    for file in ("train.jsonl", "eval.jsonl", "sft.jsonl"):
        assert (tmp_path / "a" / file).read_text() == (tmp_path / "b" / file).read_text()


def test_bad_settings_and_a_wrong_index_are_refused(numbered_world: Path, tmp_path: Path) -> None:
    questions = one_hop_questions(load_entities(numbered_world), "occupation", "train")[:4]

    class NowhereTool:
        async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
            return ToolOutcome(OK, "Doc 1(Title: Elsewhere) Nothing about anyone.")

    with pytest.raises(ValueError, match="tool_fraction"):
        sft_trajectories(questions, NowhereTool(), 1.5, random.Random(0))
    with pytest.raises(RuntimeError, match="index of this world"):
        sft_trajectories(questions, NowhereTool(), 1.0, random.Random(0))
    with pytest.raises(ValueError, match="num_sft_entities"):
        make_search_task(numbered_world, tmp_path, NowhereTool(), num_sft_entities=100_000)
    with pytest.raises(ValueError, match="make-qa-world"):
        make_search_task(tmp_path / "no-world", tmp_path, NowhereTool())
