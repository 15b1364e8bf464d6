"""The corpus a user indexes: JSONL rows `{id, title, text}` read one line at a time.

`read_corpus` streams a file of any size (it holds one chunk of rows, never the whole file) and
checks every row, so a bad line stops indexing with its line number and what to fix instead of
producing an index with holes. A row may carry `doc_id`: passages that share it form one
document, which `Access` returns whole (default: the passage is its own document). Other keys
are ignored, so Search-R1 style rows with extra metadata index as they are; a row with
`contents` instead of `title`/`text` (Search-R1's wiki dump: `"Title"\\ntext`) is split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# One JSONL line longer than this is almost surely a mistake (a whole book in one passage).
MAX_LINE_BYTES = 1_000_000
# Ids travel in URLs (`/access`) and gRPC messages; keep them short and printable.
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable unit of text."""

    id: str
    title: str
    text: str
    doc_id: str = ""

    @property
    def contents(self) -> str:
        """Search-R1's one-field form: the title on the first line, the text after it."""
        return f"{self.title}\n{self.text}"

    @property
    def document_id(self) -> str:
        return self.doc_id or self.id


def parse_row(line: str, where: str) -> Passage:
    """One JSONL line as a Passage; ValueError naming `where` (file:line) and the fix."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where}: not valid JSON ({exc.msg}); each line must be one object "
            '{"id": ..., "title": ..., "text": ...}'
        ) from None
    if not isinstance(row, dict):
        # Bad input data is a ValueError (STYLE.md), hence the noqa on these type checks.
        raise ValueError(f"{where}: expected an object with id, title and text")  # noqa: TRY004
    if "text" not in row and isinstance(row.get("contents"), str):
        title, _, text = row["contents"].partition("\n")
        row = {**row, "title": row.get("title", title.strip().strip('"')), "text": text}
    raw_id = row.get("id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id.strip():
        raise ValueError(f"{where}: `id` must be a non-empty string (or an integer)")
    if len(raw_id) > MAX_ID_CHARS or not raw_id.isprintable():
        raise ValueError(f"{where}: `id` must be printable and at most {MAX_ID_CHARS} characters")
    title = row.get("title", "")
    text = row.get("text")
    if not isinstance(title, str):
        raise ValueError(f'{where}: `title` must be a string (use "" for none)')  # noqa: TRY004
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: `text` must be a non-empty string")
    doc_id = row.get("doc_id", "")
    if doc_id is None:
        doc_id = ""
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
        raise ValueError(f"{where}: `doc_id` must be a string when present")  # noqa: TRY004
    return Passage(id=raw_id, title=title, text=text, doc_id=str(doc_id))


def read_corpus(path: str | Path) -> Iterator[Passage]:
    """Yield the passages of a JSONL corpus in file order; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"corpus {path} not found; pass a JSONL file of {{id, title, text}} rows")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(
                    f"{where}: line longer than {MAX_LINE_BYTES} bytes; "
                    "split long documents into passages (same doc_id)"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not UTF-8; re-encode the corpus as UTF-8") from None
            if not line.strip():
                continue
            yield parse_row(line, where)


def chunked(passages: Iterator[Passage], chunk_size: int) -> Iterator[list[Passage]]:
    """Group a stream into lists of at most `chunk_size` (the unit of work while indexing)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk: list[Passage] = []
    for passage in passages:
        chunk.append(passage)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_corpus(passages: list[Passage] | Iterator[Passage], path: str | Path) -> int:
    """Write passages as JSONL (what `read_corpus` reads); returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for p in passages:
            row = {"id": p.id, "title": p.title, "text": p.text}
            if p.doc_id:
                row["doc_id"] = p.doc_id
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
