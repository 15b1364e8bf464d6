"""The passages of an index on disk (SQLite), looked up by row number, passage id or document id.

The BM25 matrix and the dense index name passages by row number (their order in the corpus);
this store turns rows back into `{id, title, text}` and serves `Access` by id. SQLite because it
streams in while indexing (one transaction, bounded memory), answers point lookups in
microseconds without loading the collection, and several replicas can read one file at once:
readers open it with `immutable=1` (no locks, no journal), so the index directory may sit on a
read-only volume. The file is never written after `agentrl search index` finishes.

A document is every passage sharing a `doc_id` (a passage without one is its own document);
fetching a document returns its passages' texts joined by blank lines, under its first title.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from agentrl.search.corpus import Passage

SCHEMA = """
CREATE TABLE passages (
  row INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  doc_id TEXT NOT NULL,
  title TEXT NOT NULL,
  text TEXT NOT NULL
);
"""
# SQLite's default cap on `?` parameters per statement is 32766; stay well below it.
MAX_PARAMS_PER_QUERY = 900


class DocStoreWriter:
    """Appends passages in corpus order; row numbers are 0, 1, 2, ..."""

    def __init__(self, path: Path):
        if path.exists():
            raise ValueError(f"{path} already exists; index into an empty directory")
        self._conn = sqlite3.connect(path)
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(SCHEMA)
        self.num_rows = 0

    def add(self, passages: list[Passage]) -> None:
        duplicate = self._first_duplicate(passages)
        if duplicate is not None:
            raise ValueError(
                f"passage id {duplicate!r} appears more than once in the corpus; ids must be unique"
            )
        rows = [
            (self.num_rows + i, p.id, p.document_id, p.title, p.text)
            for i, p in enumerate(passages)
        ]
        self._conn.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?)", rows)
        self.num_rows += len(rows)

    def _first_duplicate(self, passages: list[Passage]) -> str | None:
        seen: set[str] = set()
        for p in passages:
            if p.id in seen:
                return p.id
            seen.add(p.id)
        for chunk in _chunks([p.id for p in passages]):
            marks = ",".join("?" * len(chunk))
            hit = self._conn.execute(
                f"SELECT id FROM passages WHERE id IN ({marks}) LIMIT 1", chunk
            ).fetchone()
            if hit:
                return hit[0]
        return None

    def close(self) -> None:
        self._conn.execute("CREATE INDEX passages_doc_id ON passages (doc_id, row)")
        self._conn.commit()
        self._conn.close()


class DocStore:
    """Read-only lookups; safe to share between threads."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ValueError(f"{path} not found; the index directory is incomplete, rebuild it")
        self._path = path
        self._local = threading.local()
        self.num_rows = self._conn().execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            uri = f"file:{self._path.resolve()}?mode=ro&immutable=1"
            conn = self._local.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return conn

    def by_rows(self, rows: Iterable[int]) -> list[Passage]:
        """Passages for row numbers, in the order given (rows must exist)."""
        rows = [int(r) for r in rows]
        found = self._select("row", rows)
        return [found[r] for r in rows]

    def by_ids(self, ids: list[str]) -> dict[str, Passage]:
        """Passages whose id is in `ids` (missing ids are absent from the result)."""
        return {p.id: p for p in self._select("id", ids).values()}

    def documents(self, doc_ids: list[str]) -> dict[str, Passage]:
        """Whole documents (all their passages, in corpus order) for the doc ids that exist."""
        parts: dict[str, list[Passage]] = {}
        for chunk in _chunks(list(dict.fromkeys(doc_ids))):
            marks = ",".join("?" * len(chunk))
            cursor = self._conn().execute(
                f"SELECT id, doc_id, title, text FROM passages WHERE doc_id IN ({marks}) "
                "ORDER BY doc_id, row",
                chunk,
            )
            for pid, doc_id, title, text in cursor:
                parts.setdefault(doc_id, []).append(Passage(pid, title, text, doc_id))
        return {
            doc_id: Passage(
                id=doc_id, title=ps[0].title, doc_id=doc_id, text="\n\n".join(p.text for p in ps)
            )
            for doc_id, ps in parts.items()
        }

    def _select(self, column: str, keys: list) -> dict:
        found: dict = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            cursor = self._conn().execute(
                f"SELECT row, id, doc_id, title, text FROM passages WHERE {column} IN ({marks})",
                chunk,
            )
            for row, pid, doc_id, title, text in cursor:
                # A passage that is its own document was read without a doc_id; give it back so.
                passage = Passage(
                    id=pid, title=title, text=text, doc_id="" if doc_id == pid else doc_id
                )
                found[row if column == "row" else pid] = passage
        return found


def _chunks(keys: list) -> Iterable[list]:
    for start in range(0, len(keys), MAX_PARAMS_PER_QUERY):
        yield keys[start : start + MAX_PARAMS_PER_QUERY]
