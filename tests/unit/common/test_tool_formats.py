"""Tool-call formats: stop strings, parsing a turn's call (and its errors), observations, answers."""

from __future__ import annotations

import json

import pytest

from agentrl.common.tool_formats import extract_answer, get_format, has_answer


def test_code_tags_stop_on_closing_tags_and_answer() -> None:
    fmt = get_format("code_tags")
    assert fmt.stop_strings == ["</code>", "</python>", "</answer>"]
    assert fmt.ends_with_call("</code>") and fmt.ends_with_call("</python>")
    assert not fmt.ends_with_call("</answer>") and not fmt.ends_with_call(None)


@pytest.mark.parametrize(
    ("turn", "code"),
    [
        ("Let me compute.\n<code>\nprint(6 * 7)\n</code>", "print(6 * 7)"),
        ("<python>x = 1\nprint(x)</python>", "x = 1\nprint(x)"),
        # Only the last call of the turn counts (an earlier quoted example is not run).
        ("e.g. <code>1</code> then <code>\nprint(2)\n</code>", "print(2)"),
    ],
)
def test_code_tags_parse_the_last_call(turn: str, code: str) -> None:
    call = get_format("code_tags").parse(turn)
    assert (call.tool, call.arguments, call.error) == ("python", code, "")


def test_code_tags_without_opening_or_empty_are_parse_errors() -> None:
    fmt = get_format("code_tags")
    assert fmt.parse("print(1)\n</code>").error == "</code> without an opening <code>"
    assert fmt.parse("<code>\n\n</code>").error == "empty <code> call"


def test_parse_of_a_turn_without_a_call_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="does not contain a closing tag"):
        get_format("code_tags").parse("no call here")


def test_search_tags_parse_the_query() -> None:
    call = get_format("search_tags").parse(
        "I should look it up. <search> capital of France</search>"
    )
    assert (call.tool, call.arguments) == ("search", " capital of France")


def test_hermes_parses_json_and_rejects_bad_calls() -> None:
    fmt = get_format("hermes")
    ok = fmt.parse(
        '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
    )
    assert ok.tool == "python" and json.loads(ok.arguments) == {"code": "print(1)"}
    stringly = fmt.parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert json.loads(stringly.arguments) == {"a": 1} and not stringly.error
    assert fmt.parse("<tool_call>{not json</tool_call>").error.startswith("tool call is not JSON")
    assert "must be" in fmt.parse('<tool_call>{"arguments": {}}</tool_call>').error


def test_observations_are_wrapped_in_the_format_tags() -> None:
    assert get_format("code_tags").render_observation("42") == "\n<output>\n42\n</output>\n"
    assert get_format("search_tags").render_observation("doc").startswith("\n<information>\n")


def test_answers_are_recognised_and_extracted() -> None:
    assert has_answer("so <answer>42</answer>") and not has_answer("<answer>42")
    assert not has_answer("</answer> <answer>")
    assert extract_answer("<answer>1</answer> no, <answer> 42 </answer>") == "42"
    assert extract_answer("no answer") is None


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown tool format 'xml'"):
        get_format("xml")
