"""Tool-call formats of the agent loop: stop strings, how a call is parsed out of a model turn,
how an observation is written back, and how a final answer is recognised. Pure text logic.

| format      | call                                   | observation                   |
|-------------|----------------------------------------|-------------------------------|
| code_tags   | `<code>...</code>` / `<python>...</python>` | `<output>...</output>`   |
| search_tags | `<search>query</search>`               | `<information>...</information>` |
| hermes      | `<tool_call>{"name": .., "arguments": {..}}</tool_call>` | `<tool_response>...</tool_response>` |

Every format ends an episode on `</answer>` (the answer is `<answer>...</answer>`) or on EOS.
A turn is parsed from its own text: the model's tokens of this turn, decoded. A call whose
closing tag has no opening tag in the turn, or whose JSON does not parse, is a parse error that
is shown to the model as an observation (the episode goes on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class ParsedCall:
    tool: str
    """python | search | the Hermes function name; empty when the call did not parse."""
    arguments: str
    """Code, query, or the JSON arguments (as written by the model)."""
    error: str = ""
    """Why the call could not be parsed; non-empty means TOOL_CALL_STATUS_PARSE_ERROR."""


@dataclass(frozen=True)
class ToolFormat:
    name: str
    tags: tuple[tuple[str, str], ...]
    """(opening, closing) tag pairs of a call; the closing tags are the turn's stop strings."""
    observation_open: str
    observation_close: str
    tool: str = ""
    """The tool a tag call runs (code_tags: python, search_tags: search); hermes names its own."""

    @property
    def stop_strings(self) -> list[str]:
        return [close for _, close in self.tags] + [ANSWER_CLOSE]

    def ends_with_call(self, stop_reason: object) -> bool:
        """Whether the engine stopped the turn on one of this format's closing tags."""
        return stop_reason in {close for _, close in self.tags}

    def parse(self, turn_text: str) -> ParsedCall:
        """The call a turn ends with (the turn stopped on a closing tag)."""
        closers = [(turn_text.rfind(close), opening, close) for opening, close in self.tags]
        end, opening, close = max(closers)
        if end < 0:
            raise ValueError(
                f"turn does not contain a closing tag of {self.name}; parse() is "
                "for turns that ends_with_call()"
            )
        start = turn_text.rfind(opening, 0, end)
        if start < 0:
            return ParsedCall(
                tool="", arguments=turn_text[:end], error=f"{close} without an opening {opening}"
            )
        body = turn_text[start + len(opening) : end]
        if self.name == "hermes":
            return parse_hermes(body)
        if not body.strip():
            return ParsedCall(tool=self.tool, arguments=body, error=f"empty {opening} call")
        return ParsedCall(tool=self.tool, arguments=body.strip("\n"))

    def render_observation(self, output: str) -> str:
        """The text appended after a call; tokenised on its own and appended with loss mask 0."""
        return f"\n{self.observation_open}\n{output}\n{self.observation_close}\n"


def parse_hermes(body: str) -> ParsedCall:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParsedCall(tool="", arguments=body.strip(), error=f"tool call is not JSON: {exc}")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ParsedCall(
            tool="",
            arguments=body.strip(),
            error='tool call must be {"name": ..., "arguments": {...}}',
        )
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ParsedCall(
                tool=call["name"],
                arguments=arguments,
                error="arguments is a string that is not JSON",
            )
    return ParsedCall(tool=call["name"], arguments=json.dumps(arguments))


def has_answer(text: str) -> bool:
    """A final answer is present: `<answer>` followed by `</answer>`."""
    start = text.find(ANSWER_OPEN)
    return start >= 0 and text.find(ANSWER_CLOSE, start) >= 0


def extract_answer(text: str) -> str | None:
    """The last `<answer>...</answer>` content, or None."""
    end = text.rfind(ANSWER_CLOSE)
    start = text.rfind(ANSWER_OPEN, 0, end) if end >= 0 else -1
    return text[start + len(ANSWER_OPEN) : end].strip() if start >= 0 else None


FORMATS: dict[str, ToolFormat] = {
    "code_tags": ToolFormat(
        "code_tags",
        (("<code>", "</code>"), ("<python>", "</python>")),
        "<output>",
        "</output>",
        tool="python",
    ),
    "search_tags": ToolFormat(
        "search_tags",
        (("<search>", "</search>"),),
        "<information>",
        "</information>",
        tool="search",
    ),
    "hermes": ToolFormat(
        "hermes", (("<tool_call>", "</tool_call>"),), "<tool_response>", "</tool_response>"
    ),
}


def get_format(name: str) -> ToolFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown tool format {name!r}; one of {', '.join(FORMATS)}")
    return FORMATS[name]
