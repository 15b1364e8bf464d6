"""The QA world: reproducible, facts where the questions say, answers unique, splits sealed."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from agentrl.search.corpus import read_corpus
from agentrl.search.qa_questions import make_qa_world, read_questions
from agentrl.search.qa_world import FACTS, generate_world
from agentrl.search.retriever import SearchIndex


def load(world: Path) -> tuple[dict, dict, list[dict], list[dict]]:
    passages = {p.id: p for p in read_corpus(world / "corpus.jsonl")}
    entities = {e["id"]: e for e in map(json.loads, (world / "entities.jsonl").open())}
    return (
        passages,
        entities,
        read_questions(world / "train.jsonl"),
        read_questions(world / "test.jsonl"),
    )


def test_same_seed_same_world_other_seed_other_world(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_qa_world(tmp_path / name, seed=seed, num_passages=400, num_questions=60)
    for file in ("corpus.jsonl", "train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
        assert (tmp_path / "a" / file).read_bytes() != (tmp_path / "c" / file).read_bytes()


def test_every_fact_is_stated_in_the_passage_recorded_for_it(qa_world: Path) -> None:
    passages, entities, _, _ = load(qa_world)
    for entity in entities.values():
        for fact in (f for f in FACTS if f.subject == entity["kind"]):
            text = passages[entity["fact_passage"][fact.name]].text
            obj = (
                entities[entity["links"][fact.name]]["name"]
                if fact.target
                else entity["values"][fact.name]
            )
            assert entity["name"] in text and obj in text, (entity["id"], fact.name)
            assert passages[entity["fact_passage"][fact.name]].doc_id == entity["id"]


def test_questions_follow_the_world_to_their_answer(qa_world: Path) -> None:
    passages, entities, train, test = load(qa_world)
    assert Counter(q["hops"] for q in train + test).keys() == {1, 2, 3, 4}
    for q in train + test:
        assert len(q["supporting_ids"]) == len(q["path"]) == q["hops"]
        current = entities[q["entity_ids"][0]]
        assert current["name"] in q["question"]
        for step, support in zip(q["path"], q["supporting_ids"]):
            kind, fact = step.split(".")
            assert current["kind"] == kind and current["fact_passage"][fact] == support
            if fact in current["links"]:
                current = entities[current["links"][fact]]
            else:
                assert current["values"][fact] == q["answers"][0]
        assert q["answers"][0] in passages[q["supporting_ids"][-1]].text
        assert len(set(q["entity_ids"])) == len(q["entity_ids"]), "paths never revisit"
        assert json.loads(q["ground_truth"]) == {"answers": q["answers"]}
        assert (q["task_type"], q["tools"], q["prompt"]) == ("qa", ["search"], q["question"])


def test_test_entities_and_answers_never_appear_in_training_questions(qa_world: Path) -> None:
    _, entities, train, test = load(qa_world)
    train_words = {w.lower() for q in train for w in re.findall(r"\w+", q["question"])}
    train_entities = {e for q in train for e in q["entity_ids"]}
    for q in test:
        assert all(entities[e]["split"] == "test" for e in q["entity_ids"])
        assert not train_entities & set(q["entity_ids"])
        for entity_id in q["entity_ids"]:
            name_words = {w.lower() for w in re.findall(r"\w+", entities[entity_id]["name"])}
            # Kind words (Guild, Festival) are shared vocabulary; invented words are not.
            invented = {w for w in name_words if w.capitalize() not in _COMMON_NAME_WORDS}
            assert not invented & train_words, (q["id"], invented & train_words)
        if not q["answers"][0][:1].isdigit():
            answer_words = {w.lower() for w in re.findall(r"\w+", q["answers"][0])}
            invented = answer_words - {w.lower() for w in _COMMON_NAME_WORDS} - {"the"}
            assert not invented & train_words, q["id"]


def test_single_hop_supporting_passage_is_in_bm25_top_3_for_90_percent(
    qa_world: Path, bm25_index_dir: Path
) -> None:
    index = SearchIndex(bm25_index_dir)
    questions = [
        q
        for q in read_questions(qa_world / "train.jsonl") + read_questions(qa_world / "test.jsonl")
        if q["hops"] == 1
    ]
    results = index.retrieve([q["question"] for q in questions], 3, "bm25")
    found = sum(
        q["supporting_ids"][0] in {h.passage.id for h in hits}
        for q, hits in zip(questions, results)
    )
    assert len(questions) >= 100
    assert found / len(questions) >= 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_passages": 50}, "at least 200"),
        ({"test_fraction": 0.9}, "test_fraction"),
        ({"max_hops": 5}, "max_hops"),
        ({"num_questions": 1}, "num_questions"),
    ],
)
def test_bad_sizes_are_refused_with_the_fix(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_qa_world(tmp_path, seed=0, **{"num_passages": 400, **kwargs})


def test_world_size_follows_the_request() -> None:
    world = generate_world(seed=1, num_passages=5_000, test_fraction=0.2)
    assert 4_500 <= len(world.passages) <= 5_500
    test_share = sum(e.split == "test" for e in world.entities.values()) / len(world.entities)
    assert 0.15 <= test_share <= 0.25


_COMMON_NAME_WORDS = {
    "Company",
    "Guild",
    "Holdings",
    "Works",
    "Institute",
    "Society",
    "Trust",
    "Collective",
    "Foundation",
    "Syndicate",
    "Festival",
    "Regatta",
    "Exhibition",
    "Congress",
    "Fair",
    "Tournament",
    "Summit",
    "Games",
    "Symposium",
    "Carnival",
    "Lantern",
    "Harvest",
    "Iron",
    "Silver",
    "River",
    "Winter",
    "Glass",
    "Amber",
    "Salt",
    "Copper",
    "Falcon",
    "Tide",
}


def test_a_numbered_world_differs_only_by_its_catalogue_numbers_in_titles() -> None:
    plain = generate_world(seed=3, num_passages=1_000, test_fraction=0.2)
    numbered = generate_world(seed=3, num_passages=1_000, test_fraction=0.2, numbered=True)
    numbers = [e.number for e in numbered.entities.values()]
    assert len(set(numbers)) == len(numbers)  # distinct
    assert {len(n) for n in numbers} == {5} and all(n.isdigit() for n in numbers)
    assert all(e.number == "" for e in plain.entities.values())
    for a, b in zip(plain.passages, numbered.passages, strict=True):
        entity = numbered.entities[b.doc_id]
        assert (a.id, a.text, a.doc_id) == (b.id, b.text, b.doc_id)
        assert (a.title, b.title) == (entity.name, f"{entity.name} (no. {entity.number})")
