"""Index directories: layout, versions, refusal to clobber, atomicity, opening them again, and
the retrieval rules of an opened index (access by id, method checks, rank fusion)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from agentrl.search.corpus import Passage, write_corpus
from agentrl.search.indexer import build_index, read_manifest
from agentrl.search.retriever import (
    SearchIndex,
    UnknownIdsError,
    fuse_scores,
    parse_synthetic_url,
    synthetic_url,
)

PASSAGES = [
    Passage("a1", "Velna River", "The Velna river runs past Orford.", "velna"),
    Passage("a2", "Velna River", "Its water is cold in spring.", "velna"),
    Passage("b1", "Orford", "Orford is a town with a stone bridge."),
]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    write_corpus(PASSAGES, tmp_path / "corpus.jsonl")
    return tmp_path / "corpus.jsonl"


def test_layout_manifest_and_search_after_reopening(corpus: Path, tmp_path: Path) -> None:
    manifest = build_index(corpus, tmp_path / "idx", progress=False)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "bm25",
        "manifest.json",
        "passages.sqlite",
    ]
    assert read_manifest(tmp_path / "idx") == manifest
    assert (manifest["num_passages"], manifest["methods"], manifest["name"]) == (3, ["bm25"], "idx")
    index = SearchIndex(tmp_path / "idx")
    [hits] = index.retrieve(["stone bridge town"], 2, "bm25")
    assert hits[0].passage == PASSAGES[2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_version_depends_on_content_only(corpus: Path, tmp_path: Path) -> None:
    first = build_index(corpus, tmp_path / "one", progress=False)
    second = build_index(corpus, tmp_path / "two", progress=False)
    assert first["version"] == second["version"]
    write_corpus(PASSAGES[:2], tmp_path / "smaller.jsonl")
    assert (
        build_index(tmp_path / "smaller.jsonl", tmp_path / "three", progress=False)["version"]
        != first["version"]
    )


def test_existing_index_needs_overwrite(corpus: Path, tmp_path: Path) -> None:
    build_index(corpus, tmp_path / "idx", progress=False)
    with pytest.raises(ValueError, match="pass --overwrite"):
        build_index(corpus, tmp_path / "idx", progress=False)
    write_corpus(PASSAGES[:1], tmp_path / "one.jsonl")
    build_index(tmp_path / "one.jsonl", tmp_path / "idx", overwrite=True, progress=False)
    assert SearchIndex(tmp_path / "idx").num_passages == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_duplicate_ids_fail_and_leave_nothing_behind(tmp_path: Path) -> None:
    write_corpus(PASSAGES + [Passage("a2", "Again", "dup")], tmp_path / "dup.jsonl")
    with pytest.raises(ValueError, match="'a2' appears more than once"):
        build_index(tmp_path / "dup.jsonl", tmp_path / "idx", chunk_passages=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.jsonl"]


def test_access_by_passage_id_and_by_document_id(corpus: Path, tmp_path: Path) -> None:
    build_index(corpus, tmp_path / "idx", progress=False)
    index = SearchIndex(tmp_path / "idx")
    passage, document = index.access(["b1", "velna"])
    assert passage == PASSAGES[2]
    assert (document.id, document.title) == ("velna", "Velna River")
    assert document.text == f"{PASSAGES[0].text}\n\n{PASSAGES[1].text}"
    with pytest.raises(UnknownIdsError, match="'nope'"):
        index.access(["a1", "nope"])


def test_pages_by_url_and_synthetic_urls_resolve_to_whole_documents(tmp_path: Path) -> None:
    wiki = "https://en.wikipedia.org/wiki/Velna"
    passages = [
        Passage("a1", "Velna", "The Velna runs past Orford.", url=wiki),
        Passage("a2", "Velna", "Its water is cold.", url=wiki, contents_head='"Velna"\n'),
        Passage("b1", "Orford", "A town with a bridge.", "orford"),
    ]
    write_corpus(passages, tmp_path / "corpus.jsonl")
    build_index(tmp_path / "corpus.jsonl", tmp_path / "idx", progress=False)
    index = SearchIndex(tmp_path / "idx")
    page, orford = index.lookup([wiki, "agentrl://idx/orford"])
    assert (page.id, page.url, page.text) == (
        "a1",
        wiki,
        f"{passages[0].text}\n\n{passages[1].text}",
    )
    assert orford.text == passages[2].text
    assert index.url_of(index.lookup(["b1"])[0]) == "agentrl://idx/orford"
    assert index.url_of(index.lookup(["a2"])[0]) == wiki
    assert index.lookup(["a2"])[0].contents == '"Velna"\nIts water is cold.'
    # Another index's URL, an unknown document, a near miss: nothing.
    assert index.lookup(["agentrl://other/orford", "agentrl://idx/x", wiki + "/"]) == [None] * 3
    assert synthetic_url("my index", "a/b c") == "agentrl://my%20index/a%2Fb%20c"
    assert parse_synthetic_url(synthetic_url("my index", "a/b c")) == ("my index", "a/b c")


def test_an_index_built_before_urls_and_contents_head_still_serves(
    corpus: Path, tmp_path: Path
) -> None:
    build_index(corpus, tmp_path / "idx", progress=False)
    with sqlite3.connect(tmp_path / "idx" / "passages.sqlite") as conn:
        conn.execute("DROP INDEX passages_url")
        conn.execute("ALTER TABLE passages DROP COLUMN url")
        conn.execute("ALTER TABLE passages DROP COLUMN contents_head")
    index = SearchIndex(tmp_path / "idx")
    [hits] = index.retrieve(["stone bridge town"], 1, "bm25")
    assert hits[0].passage == PASSAGES[2]
    assert index.lookup(["agentrl://idx/velna", "https://x"])[0].id == "velna"
    assert index.lookup(["https://x"]) == [None]


def test_version_changes_with_urls_and_contents_only_when_present(tmp_path: Path) -> None:
    plain = [Passage("a", "T", "body")]
    versions = []
    for name, passages in [
        ("plain", plain),
        ("url", [Passage("a", "T", "body", url="https://t")]),
        ("quoted", [Passage("a", "T", "body", contents_head='"T"\n')]),
    ]:
        write_corpus(passages, tmp_path / f"{name}.jsonl")
        versions.append(
            build_index(tmp_path / f"{name}.jsonl", tmp_path / name, progress=False)["version"]
        )
    assert len(set(versions)) == 3


def test_not_an_index_and_other_formats_are_explained(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="build one with `agentrl search index"):
        SearchIndex(tmp_path)
    build_index(corpus, tmp_path / "idx", progress=False)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ValueError, match="rebuild it"):
        SearchIndex(tmp_path / "idx")


def test_dense_methods_are_refused_on_a_bm25_index(corpus: Path, tmp_path: Path) -> None:
    build_index(corpus, tmp_path / "idx", progress=False)
    with pytest.raises(ValueError, match="has bm25"):
        SearchIndex(tmp_path / "idx").retrieve(["river"], 1, "dense")


def test_hybrid_fusion_scales_bm25_and_rewards_agreement() -> None:
    bm25 = (np.array([5, 7, 9]), np.array([8.0, 4.0, 2.0]))
    dense = (np.array([7, 1]), np.array([0.9, 0.8]))
    rows, scores = fuse_scores(bm25, dense, top_k=3)
    assert rows.tolist() == [7, 5, 1]  # 7 is found by both
    assert scores.tolist() == pytest.approx([0.5 * 4 / 8 + 0.5 * 0.9, 0.5, 0.4])
    rows, _ = fuse_scores((np.array([], dtype=np.int64), np.array([])), dense, top_k=5)
    assert rows.tolist() == [7, 1]  # no BM25 match: dense alone decides
