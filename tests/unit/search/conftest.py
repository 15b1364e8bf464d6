"""Shared fixtures of the search tests: one small generated QA world and its BM25 index, plain
and numbered."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.search.indexer import build_index
from agentrl.search.qa_questions import make_qa_world

# Big enough for every kind of question (several countries per split), indexed in ~0.2 s.
WORLD_PASSAGES = 1_500
WORLD_QUESTIONS = 400


def write_world(factory: pytest.TempPathFactory, name: str, numbered: bool = False) -> Path:
    out = factory.mktemp(name)
    make_qa_world(
        out, seed=7, num_passages=WORLD_PASSAGES, num_questions=WORLD_QUESTIONS, numbered=numbered
    )
    return out


def index_world(world: Path, factory: pytest.TempPathFactory, name: str) -> Path:
    out = factory.mktemp(name) / "world"
    build_index(world / "corpus.jsonl", out, progress=False)
    return out


@pytest.fixture(scope="session")
def qa_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world(tmp_path_factory, "qa-world")


@pytest.fixture(scope="session")
def bm25_index_dir(qa_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_world(qa_world, tmp_path_factory, "index")


@pytest.fixture(scope="session")
def numbered_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same world with catalogue numbers (`make-qa-world --numbered`), as the quickstart."""
    return write_world(tmp_path_factory, "numbered-world", numbered=True)


@pytest.fixture(scope="session")
def numbered_index_dir(numbered_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_world(numbered_world, tmp_path_factory, "numbered-index")
