"""One loaded index directory: BM25, dense and hybrid retrieval, and access by id.

`SearchIndex` is what the service holds per index: read-only, thread-safe, no request checks
(those live in engine.py). Methods:

- `bm25`: lexical, bm25s scores (only passages sharing a term with the query are returned);
- `dense`: cosine similarity of all-MiniLM-L6-v2 embeddings (exact search);
- `hybrid`: a convex combination of the two scores over the union of each one's top
  `HYBRID_CANDIDATES`: `w * bm25 / max_bm25 + (1 - w) * cosine` (BM25 scaled to [0, 1] per
  query; a passage missing from one list gets 0 from it). Comparable only within one query.

Ties are broken by corpus order, so one query always gives one answer, whichever transport.

Addresses (`lookup`, `access`): a key is a passage id, else a document id, else a `url` some
passages carry (their page), else this index's synthetic document URL
`agentrl://<index>/<doc id, percent-encoded>`, which `url_of` gives a passage whose corpus row
had no `url`. One document keeps one URL across builds while its doc id and the index name
stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

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
# Scheme of the URLs made for passages without one; never a real address, so no clash.
SYNTHETIC_URL_SCHEME = "agentrl://"


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved passage and its score under the method used."""

    passage: Passage
    score: float


class UnknownIdsError(KeyError):
    """Access asked for keys that are no passage, document or page of the index."""

    def __init__(self, ids: list[str]):
        super().__init__(ids)
        self.ids = ids

    def __str__(self) -> str:
        shown = ", ".join(repr(i) for i in self.ids[:5])
        more = f" and {len(self.ids) - 5} more" if len(self.ids) > 5 else ""
        return f"unknown passage id(s), document id(s) or url(s): {shown}{more}"


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

    def url_of(self, passage: Passage) -> str:
        """The passage's `url`, else its document's synthetic one."""
        return passage.url or synthetic_url(self.name, passage.document_id)

    def lookup(self, keys: Sequence[str]) -> list[Passage | None]:
        """Each key as a passage, document or page (module docstring), None when unknown."""
        keys = list(keys)
        found: dict[str, Passage] = dict(self.docstore.by_ids(keys))
        missing = [k for k in keys if k not in found]
        if missing:
            found.update(self.docstore.documents(missing))
            missing = [k for k in missing if k not in found]
        if missing:
            found.update(self.docstore.pages(missing))
            missing = [k for k in missing if k not in found]
        synthetic: dict[str, str] = {}  # key -> doc id, for this index's own URLs
        for key in missing:
            parsed = parse_synthetic_url(key)
            if parsed is not None and parsed[0] == self.name:
                synthetic[key] = parsed[1]
        if synthetic:
            documents = self.docstore.documents(list(synthetic.values()))
            found.update({k: documents[d] for k, d in synthetic.items() if d in documents})
        return [found.get(k) for k in keys]

    def access(self, ids: Sequence[str]) -> list[Passage]:
        """`lookup` that raises UnknownIdsError naming every key it could not resolve."""
        passages = self.lookup(ids)
        unknown = [i for i, p in zip(ids, passages, strict=True) if p is None]
        if unknown:
            raise UnknownIdsError(unknown)
        return passages


def synthetic_url(index_name: str, doc_id: str) -> str:
    """`agentrl://<index>/<doc id>`, both percent-encoded: the address of a document."""
    return f"{SYNTHETIC_URL_SCHEME}{quote(index_name, safe='')}/{quote(doc_id, safe='')}"


def parse_synthetic_url(url: str) -> tuple[str, str] | None:
    """(index name, doc id) of a URL `synthetic_url` made; None for any other string."""
    if not url.startswith(SYNTHETIC_URL_SCHEME):
        return None
    name, slash, doc_id = url[len(SYNTHETIC_URL_SCHEME) :].partition("/")
    if not slash or not name or not doc_id:
        return None
    return unquote(name), unquote(doc_id)


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
