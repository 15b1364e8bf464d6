"""The corpus a user indexes: JSONL rows `{id, title, text}` read one line at a time.

`read_corpus` streams a file of any size (it holds one chunk of rows, never the whole file) and
checks every row, so a bad line stops indexing with its line number and what to fix instead of
producing an index with holes. A row may carry `doc_id`: passages that share it form one
document, which `Access` returns whole (default: the passage is its own document), and `url`:
the address ASearcher-style agents see and `/access` (default: a synthetic one per document,
retriever.py). Other keys are ignored, so Search-R1 style rows with extra metadata index as
they are.

A row with `contents` instead of `title`/`text` (Search-R1's wiki dump: `"Title"\\ntext`) is
split at its first newline: the text is what follows, the title the first line without its
quotes. The clients render `contents` themselves (`Doc 1(Title: "Paris") ...`), so the service
returns it exactly as written: the passage keeps what preceded the text (`contents_head`) when
that is not plain `title\\n`, a few bytes per passage instead of a second copy of the text.
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
# Browsers and proxies handle URLs up to ~2,000 characters; a longer `url` is a data mistake.
MAX_URL_CHARS = 2048


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable unit of text."""

    id: str
    title: str
    text: str
    doc_id: str = ""
    url: str = ""
    """The row's `url`; "" when it had none (the service then makes one per document)."""
    contents_head: str | None = None
    """What preceded `text` in the row's `contents`, byte for byte (Search-R1: `"Title"\\n`);
    None when the row had no `contents` or it was plain `title\\ntext`."""

    @property
    def contents(self) -> str:
        """Search-R1's one-field form, exactly as the corpus row had it (else `title\\ntext`)."""
        if self.contents_head is None:
            return self.search_text
        return self.contents_head + self.text

    @property
    def search_text(self) -> str:
        """What BM25 and the encoder index: the title on the first line, the text after it."""
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
    row, contents_head = _split_contents(row, where)
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
    url = row.get("url") or ""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or not url.isprintable():
        raise ValueError(
            f"{where}: `url` must be a printable string of at most {MAX_URL_CHARS} characters "
            "(or leave it out: the service makes one per document)"
        )
    if contents_head == f"{title}\n":
        contents_head = None  # `contents` is rebuilt from title and text; store nothing
    return Passage(
        id=raw_id,
        title=title,
        text=text,
        doc_id=str(doc_id),
        url=url,
        contents_head=contents_head,
    )


def _split_contents(row: dict, where: str) -> tuple[dict, str | None]:
    """The row with `title`/`text` filled in from `contents`, and what preceded the text."""
    contents = row.get("contents")
    if contents is None:
        return row, None
    if not isinstance(contents, str):
        raise ValueError(f"{where}: `contents` must be a string when present")  # noqa: TRY004
    text = row.get("text")
    if text is None:
        first_line, newline, rest = contents.partition("\n")
        if not newline:  # one line, no title: all of it is text
            return {**row, "title": row.get("title", ""), "text": contents}, ""
        title = row.get("title", first_line.strip().strip('"'))
        return {**row, "title": title, "text": rest}, first_line + newline
    if not isinstance(text, str) or not text.strip():
        return row, None  # parse_row names the bad `text`
    if contents.endswith(text):
        return row, contents[: len(contents) - len(text)]
    raise ValueError(
        f"{where}: the row has both `contents` and `text` and `contents` does not end with "
        "`text`; keep one of them (the service returns `contents` as written)"
    )


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
            if p.url:
                row["url"] = p.url
            if p.contents_head is not None:
                row["contents"] = p.contents
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
