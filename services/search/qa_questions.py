"""Questions over the QA world, and `make_qa_world`, which writes the whole data set.

A question is a path through the world: start at an entity, follow `hops - 1` relations, then
ask for one fact of the entity reached. "Who founded the employer of the mentor of Aldo Venn?"
needs three facts, each in its own passage: those passages are the question's
`supporting_ids`, in the order a searcher needs them. Entities on a path are all different
(no "the capital of the country of X" that is X again). Answers are plain strings with aliases
(`answers`), ready for exact match / F1.

Files written by `make_qa_world` into DIR:

    corpus.jsonl     {id, title, text, doc_id}: what `agentrl search index` takes
    train.jsonl      questions on the train sub-world; test.jsonl: on the test sub-world
    entities.jsonl   every entity with its facts and the passage stating each (for debugging)
    world.json       seed, sizes and counts (what was generated, for reports)

Question rows carry the data-set columns of AgentRL (`prompt`, `ground_truth` as JSON
`{"answers": [...]}`, `task_type: qa`, `tools: [search]`) beside the QA fields (`question`,
`answers`, `hops`, `supporting_ids`, `entity_ids`, `path`).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from agentrl.search.corpus import write_corpus
from agentrl.search.qa_world import FACTS_BY_KIND, SPLITS, Entity, Fact, World, generate_world

MAX_HOPS = 4
# Attempts per wanted question: random walks can dead-end on repeated entities.
TRIES_PER_QUESTION = 50


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    hops: int
    supporting_ids: list[str]
    entity_ids: list[str]
    path: list[str]
    split: str

    def row(self) -> dict:
        row = asdict(self)
        row.update(
            prompt=self.question,
            ground_truth=json.dumps({"answers": self.answers}),
            task_type="qa",
            tools=["search"],
        )
        return row


def answer_aliases(entities: dict[str, Entity], entity: Entity, fact: Fact) -> list[str]:
    if fact.target is not None:
        return [entities[entity.links[fact.name]].name]
    value = entity.values[fact.name]
    if fact.name == "population":
        return [value, value.replace(",", "")]
    if fact.name == "river":
        return [value, f"{value} River", f"the {value} River"]
    if fact.name == "currency":
        return [value, f"the {value}"]
    return [value]


def sample_question(
    rng: random.Random, world: World, pool: list[Entity], hops: int
) -> Question | None:
    """One random path question of `hops` facts from an entity of `pool`, or None (dead end)."""
    entities = world.entities
    start = rng.choice(pool)
    current, path, supporting, visited = start, [], [], [start.id]
    for _ in range(hops - 1):
        relations = [f for f in FACTS_BY_KIND[current.kind] if f.target is not None]
        fact = rng.choice(relations)
        nxt = entities[current.links[fact.name]]
        if nxt.id in visited:
            return None
        path.append(fact)
        supporting.append(current.fact_passage[fact.name])
        visited.append(nxt.id)
        current = nxt
    final = rng.choice(FACTS_BY_KIND[current.kind])
    if final.target is not None and current.links[final.name] in visited:
        return None
    supporting.append(current.fact_passage[final.name])
    mention = start.mention
    for fact in path:
        mention = fact.phrase.format(s=mention)
    answers = answer_aliases(entities, current, final)
    if final.target is not None:
        visited.append(current.links[final.name])
    return Question(
        id="",
        question=final.question.format(s=mention),
        answers=answers,
        hops=hops,
        supporting_ids=supporting,
        entity_ids=visited,
        path=[f"{f.subject}.{f.name}" for f in path + [final]],
        split=start.split,
    )


def generate_questions(
    rng: random.Random,
    world: World,
    split: str,
    count: int,
    single_hop_fraction: float,
    max_hops: int,
) -> list[Question]:
    pool = world.by_split(split)
    questions: list[Question] = []
    seen: set[str] = set()
    for index in range(count):
        hops = 1 if index < round(count * single_hop_fraction) else 2 + index % (max_hops - 1)
        for _ in range(TRIES_PER_QUESTION):
            question = sample_question(rng, world, pool, hops)
            if question is not None and question.question not in seen:
                break
        else:
            continue  # this world is too small for another distinct question of this length
        seen.add(question.question)
        question.id = f"{split}-{len(questions):06d}"
        questions.append(question)
    return questions


def make_qa_world(
    out_dir: str | Path,
    seed: int,
    num_passages: int = 10_000,
    num_questions: int = 2_000,
    test_fraction: float = 0.2,
    single_hop_fraction: float = 0.4,
    max_hops: int = MAX_HOPS,
    numbered: bool = False,
) -> dict:
    """Generate the world and its questions into `out_dir`; returns the summary (world.json)."""
    if not 2 <= max_hops <= MAX_HOPS:
        raise ValueError(f"max_hops must be within [2, {MAX_HOPS}], got {max_hops}")
    if not 0 <= single_hop_fraction <= 1:
        raise ValueError(f"single_hop_fraction must be within [0, 1], got {single_hop_fraction}")
    if num_questions < 2:
        raise ValueError(f"num_questions must be at least 2 (one per split), got {num_questions}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = generate_world(seed, num_passages, test_fraction, numbered)
    rng = random.Random(seed + 1)
    summary: dict = {
        "seed": seed,
        "num_passages": len(world.passages),
        "test_fraction": test_fraction,
        "numbered": numbered,
        "entities": dict(Counter(f"{e.split}.{e.kind}" for e in world.entities.values())),
        "questions": {},
    }
    write_corpus(world.passages, out / "corpus.jsonl")
    for split in SPLITS:
        count = max(
            1, round(num_questions * (test_fraction if split == "test" else 1 - test_fraction))
        )
        questions = generate_questions(rng, world, split, count, single_hop_fraction, max_hops)
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps(q.row(), ensure_ascii=False) + "\n")
        summary["questions"][split] = {
            str(h): n for h, n in sorted(Counter(q.hops for q in questions).items())
        }
    with (out / "entities.jsonl").open("w", encoding="utf-8") as f:
        for e in world.entities.values():
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_questions(path: str | Path) -> list[dict]:
    """Question rows of a train.jsonl/test.jsonl file."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
