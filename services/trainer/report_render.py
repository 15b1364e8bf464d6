"""The blocks of an `agentrl report` and their two renderings: Markdown and one HTML page.

    render_markdown(title, blocks)   # images linked by file name (report.md sits beside them)
    render_html(title, blocks)       # images as base64 data URIs, inline CSS: one file

Every piece of run data (prompts, model text, tool output, config, task names) is escaped:
HTML-escaped in the page, fenced with a fence longer than any backtick run in Markdown. In a
trajectory the model's text is split at its tool calls (the tags of every
`agentrl.common.tool_formats` format), so prose, tool calls and tool outputs read apart.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.common.tool_formats import FORMATS

# A segment longer than this is cut (with a note): a report shows examples, not whole logs.
MAX_SEGMENT_CHARS = 4000
CALL_PATTERN = re.compile(
    "|".join(
        f"{re.escape(opening)}.*?{re.escape(closing)}"
        for fmt in FORMATS.values()
        for opening, closing in fmt.tags
    ),
    re.DOTALL,
)
# Segment kind -> the label a reader sees.
SEGMENT_LABELS = {"prompt": "prompt", "model": "model", "call": "tool call", "tool": "tool output"}


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Note:
    text: str
    kind: str = "missing"
    """missing: a section or plot left out; info: context for what follows."""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    title: str


@dataclass
class Code:
    text: str
    language: str = "text"
    summary: str = ""
    """Non-empty: the block is collapsed under this summary (HTML <details>)."""


@dataclass
class Trajectory:
    sample: dict[str, Any]
    """One samples.jsonl record: step, prompt_id, prompt, reward, correct, num_tool_calls,
    finish_reason, segments [{"role": "model" | "tool", "text"}]."""


def _cut(text: str) -> str:
    if len(text) <= MAX_SEGMENT_CHARS:
        return text
    return f"{text[:MAX_SEGMENT_CHARS]}\n… ({len(text) - MAX_SEGMENT_CHARS} more characters)"


def trajectory_parts(sample: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, text) in order: the prompt, then model prose, tool calls and tool outputs."""
    parts = [("prompt", str(sample.get("prompt", "")))]
    for segment in sample.get("segments") or []:
        text = str(segment.get("text", "")) if isinstance(segment, dict) else str(segment)
        if isinstance(segment, dict) and segment.get("role") == "tool":
            parts.append(("tool", text))
            continue
        start = 0
        for call in CALL_PATTERN.finditer(text):
            parts += [("model", text[start : call.start()]), ("call", call.group())]
            start = call.end()
        parts.append(("model", text[start:]))
    return [(kind, _cut(text.strip("\n"))) for kind, text in parts if text.strip()]


def trajectory_title(sample: dict[str, Any]) -> str:
    reward = sample.get("reward")
    reward_text = f"{reward:.2f}" if isinstance(reward, int | float) else "-"
    verdict = {True: "correct", False: "incorrect"}.get(sample.get("correct"), "unscored")
    return (
        f"step {sample.get('step', '?')} · prompt {sample.get('prompt_id', '?')} · "
        f"reward {reward_text} · {verdict} · {sample.get('num_tool_calls', '?')} tool "
        f"call(s) · finish: {sample.get('finish_reason') or '?'}"
    )


def _fence(text: str, language: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _md_text(text: str) -> str:
    """Run data outside a fence: `<`, `>`, `&` as entities, so no viewer reads it as HTML."""
    return html.escape(text, quote=False)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list) -> str:
    out = [f"# {title}"]
    for block in blocks:
        match block:
            case Heading(text, level):
                out.append(f"{'#' * level} {_md_text(text)}")
            case Note(text, kind):
                out.append(f"_{_md_text(text)}_" if kind == "missing" else _md_text(text))
            case Table(header, rows):
                lines = [
                    "| " + " | ".join(_md_cell(h) for h in header) + " |",
                    "|" + "---|" * len(header),
                ]
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            case Image(path, image_title):
                out.append(f"![{_md_text(image_title)}]({path.name})")
            case Code(text, language, summary):
                out.append((f"**{summary}**\n\n" if summary else "") + _fence(text, language))
            case Trajectory(sample):
                out.append(f"#### {_md_text(trajectory_title(sample))}")
                for kind, text in trajectory_parts(sample):
                    out.append(f"**{SEGMENT_LABELS[kind]}**\n\n{_fence(text, 'text')}")
    return "\n\n".join(out) + "\n"


CSS = """
body { font: 15px/1.5 system-ui, sans-serif; color: #1f2328; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .35em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
.note { color: #6e7781; font-style: italic; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 1em; }
.plots figure { margin: 0; }
.plots img { width: 100%; border: 1px solid #d0d7de; border-radius: 6px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font: 13px/1.45 ui-monospace,
      monospace; }
.trajectory { border: 1px solid #d0d7de; border-radius: 6px; margin: 1em 0; }
.trajectory h4 { margin: 0; padding: .5em .8em; background: #f6f8fa;
                 border-bottom: 1px solid #d0d7de; font-weight: 600; }
.segment { padding: .4em .8em; border-left: 4px solid transparent; }
.segment .label { font-size: 12px; font-weight: 700; text-transform: uppercase;
                  letter-spacing: .04em; color: #57606a; }
.segment.prompt { background: #fafbfc; border-left-color: #8c959f; }
.segment.call { background: #ddf4ff; border-left-color: #0969da; }
.segment.tool { background: #fff8c5; border-left-color: #bf8700; }
details pre { background: #f6f8fa; padding: .8em; border-radius: 6px; }
summary { cursor: pointer; font-weight: 600; }
"""


def _image_html(block: Image) -> str:
    data = base64.b64encode(block.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" '
        f'alt="{html.escape(block.title)}"></figure>'
    )


def render_html(title: str, blocks: list) -> str:
    esc = html.escape
    out = [f"<h1>{esc(title)}</h1>"]
    images: list[str] = []  # consecutive images share one grid
    for block in [*blocks, None]:
        if isinstance(block, Image):
            images.append(_image_html(block))
            continue
        if images:
            out.append('<div class="plots">' + "".join(images) + "</div>")
            images = []
        match block:
            case Heading(text, level):
                out.append(f"<h{level}>{esc(text)}</h{level}>")
            case Note(text, kind):
                out.append(f'<p class="{"note" if kind == "missing" else "info"}">{esc(text)}</p>')
            case Table(header, rows):
                head = "".join(f"<th>{esc(h)}</th>" for h in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            case Code(text, _, summary):
                pre = f"<pre>{esc(text)}</pre>"
                out.append(
                    f"<details><summary>{esc(summary)}</summary>{pre}</details>" if summary else pre
                )
            case Trajectory(sample):
                parts = "".join(
                    f'<div class="segment {kind}"><div class="label">'
                    f"{SEGMENT_LABELS[kind]}</div><pre>{esc(text)}</pre></div>"
                    for kind, text in trajectory_parts(sample)
                )
                out.append(
                    f'<section class="trajectory"><h4>{esc(trajectory_title(sample))}'
                    f"</h4>{parts}</section>"
                )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )
