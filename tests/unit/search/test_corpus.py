"""Reading a JSONL corpus: what is accepted, and errors that name the line and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.search.corpus import Passage, chunked, read_corpus, write_corpus


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    passages = [
        Passage("a", "Alpha", "first text", "doc1"),
        Passage("b", "", "second", ""),
        Passage("c", "Paris", "Capital.", url="https://en.wikipedia.org/wiki/Paris"),
        Passage("d", "Paris", "Capital.", contents_head='"Paris"\n'),
        Passage("e", "", "one line, no title", contents_head=""),
        Passage("f", "T", "x", contents_head="T\nsubtitle\n"),
    ]
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
    assert rows[1].search_text == "Paris\nCapital of France."


# Search-R1's clients render `contents` themselves (first line = title), so it must come back
# exactly as the corpus row wrote it.
@pytest.mark.parametrize(
    ("row", "title", "text", "contents"),
    [
        ({"contents": '"Paris"\nCapital.'}, "Paris", "Capital.", '"Paris"\nCapital.'),
        ({"contents": "Paris\nCapital."}, "Paris", "Capital.", "Paris\nCapital."),
        ({"contents": ' "Paris" \nA\nB'}, "Paris", "A\nB", ' "Paris" \nA\nB'),
        ({"contents": "no newline at all"}, "", "no newline at all", "no newline at all"),
        ({"contents": "X: body", "title": "X", "text": "body"}, "X", "body", "X: body"),
        ({"title": "T", "text": "body"}, "T", "body", "T\nbody"),
    ],
)
def test_contents_come_back_exactly_as_written(
    tmp_path: Path, row: dict, title: str, text: str, contents: str
) -> None:
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"id": "p", **row})])
    [passage] = read_corpus(path)
    assert (passage.title, passage.text, passage.contents) == (title, text, contents)
    # Only what cannot be rebuilt from title and text is kept.
    assert (passage.contents_head is None) == (contents == f"{title}\n{text}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected an object"),
        ('{"title": "T", "text": "x"}', "`id` must be a non-empty string"),
        ('{"id": "a", "title": "T", "text": "   "}', "`text` must be a non-empty string"),
        ('{"id": "a", "title": 3, "text": "x"}', "`title` must be a string"),
        ('{"id": "a", "contents": 3}', "`contents` must be a string"),
        ('{"id": "a", "contents": "T\\nbody", "text": "other"}', "does not end with `text`"),
        ('{"id": "a", "text": "x", "url": ["u"]}', "`url` must be a printable string"),
        ('{"id": "a", "text": "x", "url": "' + "u" * 3000 + '"}', "at most 2048"),
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
