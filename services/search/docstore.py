"""The passages of an index on disk (SQLite), looked up by row number, passage id or document id.

The BM25 matrix and the dense index name passages by row number (their order in the corpus);
this store turns rows back into `{id, title, text}` and serves `Access` by id. SQLite because it
streams in while indexing (one transaction, bounded memory), answers point lookups in
microseconds without loading the collection, and several replicas can read one file at once:
readers open it with `immutable=1` (no locks, no journal), so the index directory may sit on a
read-only volume. The file is never written after `agentrl search index` finishes.

A document is every passage sharing a `doc_id` (a passage without one is its own document);
fetching a document returns its passages' texts joined by blank lines, under its first title
(and its first passage's `url` and `contents_head`). A page is every passage sharing a `url`,
put together the same way: what ASearcher's `/access` returns for an address.

Indexes built before `url` and `contents_head` existed lack those columns; they read as "" and
NULL (synthetic URLs, `contents` rebuilt as `title\\ntext`), so old directories keep serving.
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
  text TEXT NOT NULL,
  url TEXT NOT NULL DEFAULT '',
  contents_head TEXT
);
"""
# The columns every reader selects, in the order `_passage` takes them.
COLUMNS = ("row", "id", "doc_id", "title", "text", "url", "contents_head")
# Stand-ins for the columns an index built before they existed lacks.
OLD_INDEX_DEFAULTS = {"url": "''", "contents_head": "NULL"}
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
            (self.num_rows + i, p.id, p.document_id, p.title, p.text, p.url, p.contents_head)
            for i, p in enumerate(passages)
        ]
        self._conn.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
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
        # Partial: a corpus without urls (most) pays nothing for the `/access` by url lookup.
        self._conn.execute("CREATE INDEX passages_url ON passages (url, row) WHERE url != ''")
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
        present = {r[1] for r in self._conn().execute("PRAGMA table_info(passages)")}
        self._columns = ", ".join(
            c if c in present else f"{OLD_INDEX_DEFAULTS[c]} AS {c}" for c in COLUMNS
        )
        self.has_urls = "url" in present

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
        return {
            doc_id: _joined(doc_id, ps) for doc_id, ps in self._groups("doc_id", doc_ids).items()
        }

    def pages(self, urls: list[str]) -> dict[str, Passage]:
        """Every passage carrying each url that some passage carries, joined like a document."""
        if not self.has_urls:
            return {}
        groups = self._groups("url", [u for u in urls if u])
        return {url: _joined(ps[0].document_id, ps) for url, ps in groups.items()}

    def _groups(self, column: str, keys: list[str]) -> dict[str, list[Passage]]:
        parts: dict[str, list[Passage]] = {}
        # Only with this clause does SQLite use the partial index passages_url.
        url_set = "AND url != '' " if column == "url" else ""
        for chunk in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(chunk))
            cursor = self._conn().execute(
                f"SELECT {self._columns} FROM passages WHERE {column} IN ({marks}) "
                f"{url_set}ORDER BY {column}, row",
                chunk,
            )
            for values in cursor:
                passage = _passage(values)
                key = passage.document_id if column == "doc_id" else passage.url
                parts.setdefault(key, []).append(passage)
        return parts

    def _select(self, column: str, keys: list) -> dict:
        found: dict = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            cursor = self._conn().execute(
                f"SELECT {self._columns} FROM passages WHERE {column} IN ({marks})", chunk
            )
            for values in cursor:
                passage = _passage(values)
                found[values[0] if column == "row" else passage.id] = passage
        return found


def _passage(values: tuple) -> Passage:
    """A Passage from one row of `COLUMNS`."""
    _row, pid, doc_id, title, text, url, contents_head = values
    # A passage that is its own document was read without a doc_id; give it back so.
    return Passage(
        id=pid,
        title=title,
        text=text,
        doc_id="" if doc_id == pid else doc_id,
        url=url,
        contents_head=contents_head,
    )


def _joined(doc_id: str, passages: list[Passage]) -> Passage:
    """Passages (in corpus order) as one: the first one's title, url and head, texts joined."""
    first = passages[0]
    return Passage(
        id=doc_id,
        title=first.title,
        text="\n\n".join(p.text for p in passages),
        doc_id=doc_id,
        url=first.url,
        contents_head=first.contents_head,
    )


def _chunks(keys: list) -> Iterable[list]:
    for start in range(0, len(keys), MAX_PARAMS_PER_QUERY):
        yield keys[start : start + MAX_PARAMS_PER_QUERY]
