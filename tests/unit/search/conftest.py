"""Shared fixtures of the search tests: one small generated QA world and its BM25 index."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.search.indexer import build_index
from agentrl.search.qa_questions import make_qa_world

# Big enough for every kind of question (several countries per split), indexed in ~0.2 s.
WORLD_PASSAGES = 1_500
WORLD_QUESTIONS = 400


@pytest.fixture(scope="session")
def qa_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qa-world")
    make_qa_world(out, seed=7, num_passages=WORLD_PASSAGES, num_questions=WORLD_QUESTIONS)
    return out


@pytest.fixture(scope="session")
def bm25_index_dir(qa_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("index") / "world"
    build_index(qa_world / "corpus.jsonl", out, progress=False)
    return out
