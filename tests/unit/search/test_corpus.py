"""Reading a JSONL corpus: what is accepted, and errors that name the line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.search.corpus import Passage, chunked, read_corpus, write_corpus


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_ids_titles_texts_and_doc_ids(tmp_path: Path) -> None:
    passages = [Passage("a", "Alpha", "first text", "doc1"), Passage("b", "", "second", "")]
    write_corpus(passages, tmp_path / "c.jsonl")
    assert list(read_corpus(tmp_path / "c.jsonl")) == passages


def test_integer_ids_blank_lines_and_search_r1_contents_are_accepted(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            '{"id": 7, "title": "T", "text": "x"}',
            "",
            '{"id": "w1", "contents": "\\"Paris\\"\\nCapital of France."}',
        ],
    )
    rows = list(read_corpus(path))
    assert rows[0].id == "7"
    assert (rows[1].title, rows[1].text) == ("Paris", "Capital of France.")
    assert rows[1].contents == "Paris\nCapital of France."


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected an object"),
        ('{"title": "T", "text": "x"}', "`id` must be a non-empty string"),
        ('{"id": "a", "title": "T", "text": "   "}', "`text` must be a non-empty string"),
        ('{"id": "a", "title": 3, "text": "x"}', "`title` must be a string"),
    ],
)
def test_bad_rows_name_file_line_and_fix(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "c.jsonl", ['{"id": "ok", "title": "", "text": "fine"}', line])
    with pytest.raises(ValueError, match=message) as info:
        list(read_corpus(path))
    assert f"{path}:2" in str(info.value)


def test_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found; pass a JSONL file"):
        list(read_corpus(tmp_path / "absent.jsonl"))


def test_chunked_covers_the_stream_in_order() -> None:
    items = [Passage(str(i), "", "t") for i in range(7)]
    chunks = list(chunked(iter(items), 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [p for c in chunks for p in c] == items
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        list(chunked(iter(items), 0))
