"""The streaming BM25 builder against bm25s itself, and the searcher's ranking rules."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import pytest

from agentrl.search import bm25_index
from agentrl.search.bm25_index import BM25Builder, BM25Searcher, StemTokenizer, top_k_positive
from agentrl.search.corpus import read_corpus

QUERIES = [
    "Who founded the Guild?",
    "born in the city",
    "clockmaker mentored by",
    "population of about",
    "festival regatta winner",
]


def build(texts: list[str], out: Path, chunk: int) -> BM25Searcher:
    builder = BM25Builder(out / "scratch")
    for start in range(0, len(texts), chunk):
        builder.add(texts[start : start + chunk])
    builder.finish(out / "bm25")
    return BM25Searcher(out / "bm25")


@pytest.fixture(scope="module")
def world_texts(qa_world: Path) -> list[str]:
    return [p.contents for p in read_corpus(qa_world / "corpus.jsonl")]


def test_scores_equal_bm25s_in_memory_index(world_texts: list[str], tmp_path: Path) -> None:
    searcher = build(world_texts, tmp_path, chunk=500)
    tokenizer = StemTokenizer()
    reference = bm25s.BM25(method="lucene")
    reference.index([tokenizer.stems(t) for t in world_texts], show_progress=False)
    for query in QUERIES:
        expected = reference.get_scores(tokenizer.stems(query))
        assert expected.max() > 0, query
        np.testing.assert_allclose(searcher.scores(query), expected, rtol=1e-5, atol=1e-6)


def test_chunking_and_pass_two_steps_do_not_change_the_index(
    world_texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = build(world_texts, tmp_path / "whole", chunk=len(world_texts))
    # Tiny steps exercise columns filled across many pass-two steps and chunk boundaries.
    monkeypatch.setattr(bm25_index, "PASS_TWO_PAIRS", 97)
    pieces = build(world_texts, tmp_path / "pieces", chunk=13)
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(whole.model.scores[name], pieces.model.scores[name])


def test_bm25s_loads_the_written_index_and_ranks_alike(
    world_texts: list[str], tmp_path: Path
) -> None:
    searcher = build(world_texts, tmp_path, chunk=400)
    loaded = bm25s.BM25.load(str(tmp_path / "bm25"))
    query = StemTokenizer().stems("Who founded the Guild?")
    docs, scores = loaded.retrieve([query], k=5, show_progress=False)
    _, ours = searcher.search("Who founded the Guild?", 5)
    np.testing.assert_allclose(np.sort(scores[0]), np.sort(ours), rtol=1e-6)
    assert set(docs[0]) <= set(
        np.flatnonzero(searcher.scores("Who founded the Guild?") >= ours[-1])
    )


def test_sparse_and_dense_scoring_rank_identically(
    world_texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searcher = build(world_texts, tmp_path, chunk=1000)
    queries = [*QUERIES, "the of in was", "zzqx"]
    monkeypatch.setattr(bm25_index, "SPARSE_SCORING_RATIO", 0)  # always over every passage
    every = [searcher.search(q, 10) for q in queries]
    monkeypatch.setattr(bm25_index, "SPARSE_SCORING_RATIO", 10**9)  # always over postings
    for query, (rows, scores) in zip(queries, every, strict=True):
        sparse_rows, sparse_scores = searcher.search(query, 10)
        np.testing.assert_array_equal(sparse_rows, rows, err_msg=query)
        np.testing.assert_array_equal(sparse_scores, scores, err_msg=query)


def test_unknown_words_find_nothing_and_stems_match_inflections(tmp_path: Path) -> None:
    searcher = build(["The founders met in Velna.", "A quiet river town."], tmp_path, chunk=10)
    rows, _ = searcher.search("zzqx unknownword", 3)
    assert len(rows) == 0
    rows, _ = searcher.search("founder", 3)  # stem of "founders"
    assert rows.tolist() == [0]


def test_top_k_orders_by_score_then_row_and_drops_zeros() -> None:
    scores = np.array([0.0, 2.0, 1.0, 2.0, 0.0, 1.0], dtype=np.float32)
    rows, values = top_k_positive(scores, 3)
    assert rows.tolist() == [1, 3, 2]
    assert values.tolist() == [2.0, 2.0, 1.0]
    rows, _ = top_k_positive(scores, 10)
    assert rows.tolist() == [1, 3, 2, 5]


def test_empty_corpus_and_bad_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="k1 > 0"):
        BM25Builder(tmp_path, k1=0)
    with pytest.raises(ValueError, match="no passages"):
        BM25Builder(tmp_path).finish(tmp_path / "out")
