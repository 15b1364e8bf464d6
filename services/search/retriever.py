"""One loaded index directory: BM25, dense and hybrid retrieval, and access by id.

`SearchIndex` is what the service holds per index: read-only, thread-safe, no request checks
(those live in engine.py). Methods:

- `bm25`: lexical, bm25s scores (only passages sharing a term with the query are returned);
- `dense`: cosine similarity of all-MiniLM-L6-v2 embeddings (exact search);
- `hybrid`: a convex combination of the two scores over the union of each one's top
  `HYBRID_CANDIDATES`: `w * bm25 / max_bm25 + (1 - w) * cosine` (BM25 scaled to [0, 1] per
  query; a passage missing from one list gets 0 from it). Comparable only within one query.

Ties are broken by corpus order, so one query always gives one answer, whichever transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentrl.search.bm25_index import BM25Searcher
from agentrl.search.corpus import Passage
from agentrl.search.docstore import DocStore
from agentrl.search.indexer import read_manifest

METHODS = ("bm25", "dense", "hybrid")
# Weight of BM25 in hybrid scores. Measured on a 5,000-passage QA world: 0.5 gives recall@1
# 0.99 (single-hop) against 0.955 for either retriever alone and 0.93 for reciprocal rank
# fusion; 0.3 and 0.7 are within 0.015 of it, so the value is not delicate.
HYBRID_BM25_WEIGHT = 0.5
# Candidates taken from each retriever before fusing (recall of the fused list beyond this
# depth is not needed: callers ask for at most a few dozen passages).
HYBRID_CANDIDATES = 100


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved passage and its score under the method used."""

    passage: Passage
    score: float


class UnknownIdsError(KeyError):
    """Access asked for ids that are neither a passage nor a document of the index."""

    def __init__(self, ids: list[str]):
        super().__init__(ids)
        self.ids = ids

    def __str__(self) -> str:
        shown = ", ".join(repr(i) for i in self.ids[:5])
        more = f" and {len(self.ids) - 5} more" if len(self.ids) > 5 else ""
        return f"unknown passage or document id(s): {shown}{more}"


class SearchIndex:
    """An index directory opened read-only."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self.manifest = read_manifest(self.dir)
        self.name: str = self.manifest["name"]
        self.version: str = self.manifest["version"]
        self.methods: tuple[str, ...] = tuple(self.manifest["methods"])
        self.default_method: str = self.manifest["default_method"]
        self.docstore = DocStore(self.dir / "passages.sqlite")
        self.bm25 = BM25Searcher(self.dir / "bm25")
        self.dense = None
        if self.manifest.get("dense"):
            from agentrl.search.dense_index import DenseSearcher

            self.dense = DenseSearcher(self.dir / "dense")
        counts = {self.docstore.num_rows, self.bm25.num_docs, self.manifest["num_passages"]}
        if self.dense is not None:
            counts.add(self.dense.num_docs)
        if len(counts) != 1:
            raise ValueError(
                f"{self.dir}: its parts disagree on the passage count {counts}; "
                "the directory is damaged, rebuild it"
            )

    @property
    def num_passages(self) -> int:
        return self.docstore.num_rows

    def retrieve(self, queries: Sequence[str], top_k: int, method: str) -> list[list[Hit]]:
        """The best `top_k` passages for each query, best first."""
        if method not in self.methods:
            raise ValueError(
                f"method {method!r} is not available in index {self.name!r}; "
                f"it has {', '.join(self.methods)}"
            )
        if method == "bm25":
            ranked = [self.bm25.search(q, top_k) for q in queries]
        elif method == "dense":
            ranked = self.dense.search_batch(list(queries), top_k)
        else:
            depth = max(top_k, HYBRID_CANDIDATES)
            dense = self.dense.search_batch(list(queries), depth)
            ranked = [
                fuse_scores(self.bm25.search(q, depth), d, top_k)
                for q, d in zip(queries, dense, strict=True)
            ]
        return [self._hits(rows, scores) for rows, scores in ranked]

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        passages = self.docstore.by_rows(rows.tolist())
        return [Hit(p, float(s)) for p, s in zip(passages, scores.tolist())]

    def access(self, ids: Sequence[str]) -> list[Passage]:
        """Passages by passage id, else whole documents by doc id, in the order asked."""
        passages = self.docstore.by_ids(list(ids))
        missing = [i for i in ids if i not in passages]
        documents = self.docstore.documents(missing) if missing else {}
        unknown = [i for i in missing if i not in documents]
        if unknown:
            raise UnknownIdsError(unknown)
        return [passages.get(i) or documents[i] for i in ids]


def fuse_scores(
    bm25: tuple[np.ndarray, np.ndarray],
    dense: tuple[np.ndarray, np.ndarray],
    top_k: int,
    bm25_weight: float = HYBRID_BM25_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Best `top_k` rows by `w * bm25 / max(bm25) + (1 - w) * cosine`; ties by row."""
    fused: dict[int, float] = {}
    bm25_rows, bm25_scores = bm25
    if len(bm25_scores):
        scale = bm25_weight / float(bm25_scores.max())
        for row, score in zip(bm25_rows.tolist(), bm25_scores.tolist(), strict=True):
            fused[row] = score * scale
    for row, score in zip(dense[0].tolist(), dense[1].tolist(), strict=True):
        fused[row] = fused.get(row, 0.0) + (1 - bm25_weight) * score
    best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    rows = np.array([r for r, _ in best], dtype=np.int64)
    return rows, np.array([s for _, s in best], dtype=np.float64)
