"""The search quickstart's task: one-hop questions over the QA world that only a search answers.

    agentrl data make-search-task --world data/search-quickstart/world \
        --out data/search-quickstart --recipe recipes/quickstart_search.yaml

reads a world written by `agentrl data make-qa-world` (entities.jsonl) and writes:

    train.jsonl   RL prompts        {"id", "prompt", "ground_truth": '{"answers": [...]}',
    eval.jsonl    held-out prompts   "task_type": "qa", "tools": ["search"]}
    sft.jsonl     cold-start trajectories {"messages": [...]}  (trainer/sft.py's format)

Every question asks for one fact (`--fact`, default `occupation`: "What was the profession of
person no. 48213?") of one entity, named by its catalogue number (a world written with
`make-qa-world --numbered`; `--refer-by name` names it instead: "... of Mara Quell?"). The
number is why a 2-layer model learns this task: the query it must write is the question, and a
question of fixed width (five single-token digits) is copied at a fixed token distance, as the
calculator copies its operands; a name it has never seen (2-8 tokens) needs an induction-style
copy at a varying distance, which the tiny model did not learn (docs/search.md). The default is chosen for a 2-layer model: the answer is one common word
right after a fixed phrase of the top passage ("By profession, X was a clockmaker."), so the
answer is a short copy from the observation, and a guess is right 1 time in 27. The
eval questions are about the world's `test` entities, which share no name word with the train
ones (qa_world.py); the train entities are split again, SFT's from RL's, so a direct answer the
SFT model memorised never pays during RL.

The SFT trajectories are real episodes, as in trainer/calculator.py: the `<search>` call (the
question verbatim, which BM25 ranks to the fact's passage first) is executed by the search
service through the rollout's own `SearchTool`, and its text is spliced in verbatim as the tool
message, so the observation is byte for byte what an RL episode shows. A share
(`tool_fraction`) searches; the rest answer directly with the right answer, as a model that
knew the world would. RL then has to learn that searching pays on entities it has never seen.

What this does NOT cover: multi-hop questions (qa_questions.py writes those; a tiny model does
not learn to chain searches), and searches that miss: a question whose top passages do not
contain the answer gets no search trajectory (counted in the summary as `num_sft_missed`).
"""

from __future__ import annotations

import asyncio
import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.search.qa_questions import answer_aliases
from agentrl.search.qa_world import FACTS, Entity

TASK_TYPE = "qa"
TOOLS = ("search",)
DEFAULT_FACT = "occupation"
REFER_BY = ("number", "name")
FACTS_BY_NAME = {fact.name: fact for fact in FACTS}
# Search calls in flight while generating SFT data: hides gRPC latency, within the local search
# service's default two search threads.
SEARCH_PARALLELISM = 4


@dataclass(frozen=True)
class SearchQuestion:
    question: str
    answers: tuple[str, ...]
    """Gold aliases; the first is what an SFT trajectory answers."""
    entity_id: str

    def row(self, row_id: str) -> dict[str, Any]:
        return {
            "id": row_id,
            "prompt": self.question,
            "ground_truth": json.dumps({"answers": list(self.answers)}),
            "task_type": TASK_TYPE,
            "tools": list(TOOLS),
            "entity_id": self.entity_id,
        }


def load_entities(world_dir: str | Path) -> dict[str, Entity]:
    """The entities of a world directory (its entities.jsonl), by id."""
    path = Path(world_dir) / "entities.jsonl"
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; write the world first with `agentrl data "
            f"make-qa-world --seed 0 --out {world_dir}`"
        )
    with path.open(encoding="utf-8") as f:
        entities = [Entity(**json.loads(line)) for line in f if line.strip()]
    return {e.id: e for e in entities}


def question_subject(entity: Entity, refer_by: str) -> str:
    """How a question names `entity`: "person no. 48213", or its mention ("Mara Quell")."""
    if refer_by not in REFER_BY:
        raise ValueError(f"refer_by must be one of {', '.join(REFER_BY)}, got {refer_by!r}")
    if refer_by == "name":
        return entity.mention
    if not entity.number:
        raise ValueError(
            "the world's entities have no catalogue numbers: write it with "
            "`agentrl data make-qa-world --numbered`, or name entities with "
            "--refer-by name"
        )
    return f"{entity.kind} no. {entity.number}"


def one_hop_questions(
    entities: dict[str, Entity], fact_name: str, split: str, refer_by: str = "number"
) -> list[SearchQuestion]:
    """The question of `fact_name` about every entity of `split` that has the fact, in id order."""
    if fact_name not in FACTS_BY_NAME:
        raise ValueError(f"unknown fact {fact_name!r}; one of {', '.join(FACTS_BY_NAME)}")
    fact = FACTS_BY_NAME[fact_name]
    return [
        SearchQuestion(
            fact.question.format(s=question_subject(e, refer_by)),
            tuple(answer_aliases(entities, e, fact)),
            e.id,
        )
        for e in entities.values()
        if e.kind == fact.subject and e.split == split
    ]


def search_call(question: SearchQuestion) -> str:
    """The assistant's turn that searches (stops on the closing tag, like the rollout)."""
    return f"<search>{question.question}</search>"


def direct_answer(answer: str) -> str:
    """The final answer, its words after a space as in the passage ("was a clockmaker"), so that
    they are the very token ids of the passage (BPE tokens carry their leading space)."""
    return f"<answer> {answer}</answer>"


def top_passage(observation: str) -> str:
    """The first passage of a `format_passages` observation (one `Doc i(...)` line each)."""
    return observation.split("\n", 1)[0]


def executed_trajectory(question: SearchQuestion, search_tool: Any) -> dict[str, Any] | None:
    """An episode that searches, or None when the top passage lacks every alias. The call goes
    through `search_tool` (the rollout's `SearchTool`), so the tool message is the observation
    an RL episode shows; the answer is the first alias, which the top passage states."""
    from agentrl.common.tool_formats import get_format
    from agentrl.proto.core.v1 import trajectory_pb2

    call = search_call(question)
    outcome = asyncio.run(search_tool.run(get_format("search_tags").parse(call), session_id=""))
    if outcome.status != trajectory_pb2.TOOL_CALL_STATUS_OK:
        raise RuntimeError(
            f"the search service answered {outcome.output!r} (status "
            f"{outcome.status}) for {question.question!r}; is it up and serving "
            "this world's index?"
        )
    if question.answers[0] not in top_passage(outcome.output):
        return None
    return {
        "messages": [
            {"role": "user", "content": question.question},
            {"role": "assistant", "content": call},
            {"role": "tool", "content": outcome.output},
            {"role": "assistant", "content": direct_answer(question.answers[0])},
        ],
        "tool_calls": 1,
    }


def direct_trajectory(question: SearchQuestion) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question.question},
            {"role": "assistant", "content": direct_answer(question.answers[0])},
        ],
        "tool_calls": 0,
    }


def sft_trajectories(
    questions: list[SearchQuestion], search_tool: Any, tool_fraction: float, rng: random.Random
) -> tuple[list[dict[str, Any]], int]:
    """Cold-start episodes, order as `questions`: `tool_fraction` of them search through
    `search_tool`, the rest answer directly. Returns them and how many searches missed (those
    questions are left out)."""
    if not 0.0 <= tool_fraction <= 1.0:
        raise ValueError(f"tool_fraction must be in [0, 1], got {tool_fraction}")
    searches = [rng.random() < tool_fraction for _ in questions]
    with ThreadPoolExecutor(SEARCH_PARALLELISM) as pool:
        executed = iter(
            list(
                pool.map(
                    lambda q: executed_trajectory(q, search_tool),
                    [q for q, s in zip(questions, searches, strict=True) if s],
                )
            )
        )
    trajectories = [
        next(executed) if search else direct_trajectory(question)
        for question, search in zip(questions, searches, strict=True)
    ]
    kept = [t for t in trajectories if t is not None]
    num_missed = len(trajectories) - len(kept)
    if any(searches) and num_missed == sum(searches):
        raise RuntimeError(
            "no search found its answer in the top passage: is the search "
            "service serving the index of this world?"
        )
    return kept, num_missed


def split_train(
    questions: list[SearchQuestion], num_sft_entities: int, rng: random.Random
) -> tuple[list[SearchQuestion], list[SearchQuestion]]:
    """Shuffle the train questions and cut them into (SFT's, RL's): disjoint entities."""
    if not 0 < num_sft_entities < len(questions):
        raise ValueError(
            f"num_sft_entities must be within [1, {len(questions) - 1}] (the world "
            f"has {len(questions)} train questions of this fact), got "
            f"{num_sft_entities}; make a larger world (--num-passages)"
        )
    shuffled = questions[:]
    rng.shuffle(shuffled)
    return shuffled[:num_sft_entities], shuffled[num_sft_entities:]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )


def make_search_task(
    world_dir: str | Path,
    out_dir: str | Path,
    search_tool: Any,
    *,
    fact: str = DEFAULT_FACT,
    num_train: int = 1000,
    num_eval: int = 100,
    num_sft: int = 1500,
    num_sft_entities: int = 800,
    tool_fraction: float = 0.5,
    refer_by: str = "number",
    seed: int = 0,
) -> dict[str, Any]:
    """Write train.jsonl, eval.jsonl and sft.jsonl to `out_dir`; returns a summary. SFT draws
    `num_sft` episodes from `num_sft_entities` train entities; RL prompts are up to `num_train`
    of the other train entities; eval prompts `num_eval` of the test entities."""
    for name, count in (("num_train", num_train), ("num_eval", num_eval), ("num_sft", num_sft)):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    entities = load_entities(world_dir)
    rng = random.Random(f"agentrl-search-task:{seed}")
    sft_pool, train = split_train(
        one_hop_questions(entities, fact, "train", refer_by), num_sft_entities, rng
    )
    test = one_hop_questions(entities, fact, "test", refer_by)
    rng.shuffle(test)
    train, evaluation = train[:num_train], test[:num_eval]
    trajectories, num_missed = sft_trajectories(
        [rng.choice(sft_pool) for _ in range(num_sft)], search_tool, tool_fraction, rng
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", [q.row(f"search-train-{i}") for i, q in enumerate(train)])
    write_jsonl(out / "eval.jsonl", [q.row(f"search-eval-{i}") for i, q in enumerate(evaluation)])
    write_jsonl(out / "sft.jsonl", trajectories)
    num_search = sum(t["tool_calls"] for t in trajectories)
    return {
        "out_dir": str(out),
        "fact": fact,
        "refer_by": refer_by,
        "num_train": len(train),
        "num_eval": len(evaluation),
        "num_sft": len(trajectories),
        "num_sft_with_search": num_search,
        "num_sft_direct": len(trajectories) - num_search,
        "num_sft_missed": num_missed,
        "num_sft_entities": num_sft_entities,
        "seed": seed,
    }
