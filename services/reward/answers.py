"""Reading a response: its tags, its final answer (`<answer>` or `\\boxed{}`) and its program.

Responses mix the model's own text with tool calls and tool output. Tool blocks are *opaque*:
what a program prints or a search returns may contain any text, `<answer>` or `\\boxed{}`
included, and must neither break the tag structure nor count as the model's answer. Structural
tags (`<think>`, `<answer>`) may appear only at the top level. When the response has a `</think>`,
only the text after the last one is searched for the final answer (reasoning may box
intermediate results).

Everything here is linear-time regular expressions and string scans: no input can make it hang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STRUCTURAL_TAGS = ("think", "answer")
# Tool calls and their results, in every format the rollout parsers know (code tags, search
# tags, Hermes); their content is never parsed.
OPAQUE_TAGS = ("code", "python", "search", "tool_call", "tool_response", "result", "information")
_TAG_RE = re.compile(r"<(/?)(" + "|".join(STRUCTURAL_TAGS + OPAQUE_TAGS) + r")>")
# End-of-turn markers of common chat templates; they may follow the final answer.
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}]")
# The info string excludes backticks so a long run of them cannot make the match quadratic.
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n`]*\n(.*?)```", re.DOTALL)
_PYTHON_FENCE_LANGS = ("", "python", "py", "python3")


@dataclass
class Block:
    """One tag block: `text[start:end]` is `<name>...</name>`; `inner_*` bound its content."""

    name: str
    start: int
    end: int
    inner_start: int
    inner_end: int


@dataclass
class TagScan:
    """Blocks found in a response and the structural problems met on the way."""

    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def named(self, name: str) -> list[Block]:
        return [b for b in self.blocks if b.name == name]


def scan_tags(text: str) -> TagScan:
    """Match open and close tags with a stack; opaque blocks hide everything up to their close."""
    scan = TagScan()
    stack: list[tuple[str, int, int]] = []  # (name, tag start, content start)
    for match in _TAG_RE.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        if stack and stack[-1][0] in OPAQUE_TAGS and not (closing and name == stack[-1][0]):
            continue
        if not closing:
            if name in STRUCTURAL_TAGS and stack:
                scan.problems.append(f"<{name}> opened inside <{stack[-1][0]}>")
            stack.append((name, match.start(), match.end()))
        elif stack and stack[-1][0] == name:
            open_name, start, inner_start = stack.pop()
            scan.blocks.append(Block(open_name, start, match.end(), inner_start, match.start()))
        elif stack:
            scan.problems.append(f"</{name}> closes <{stack[-1][0]}>")
        else:
            scan.problems.append(f"</{name}> without a matching <{name}>")
    scan.problems.extend(f"<{name}> is never closed" for name, _, _ in reversed(stack))
    scan.blocks.sort(key=lambda b: b.start)
    return scan


def answer_region(text: str, scan: TagScan) -> str:
    """The text that may hold the final answer: after the last `</think>`, opaque blocks blanked."""
    thinks = scan.named("think")
    begin = thinks[-1].end if thinks else 0
    pieces, cursor = [], begin
    for block in scan.blocks:
        if block.name in OPAQUE_TAGS and block.end > begin:
            pieces.append(text[cursor : max(block.start, cursor)])
            cursor = max(cursor, block.end)
    pieces.append(text[cursor:])
    return " ".join(pieces)


def boxed_contents(text: str) -> list[tuple[str, int]]:
    """Every `\\boxed{...}` / `\\fbox{...}` content with braces balanced, and where it ends.

    Braces are matched in one pass with a stack, so many unclosed boxes stay linear-time.
    """
    closing_of: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE_RE.finditer(text):  # visits braces only, not every character
        i = match.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            closing_of[stack.pop()] = i
    found = []
    for match in _BOX_RE.finditer(text):
        close = closing_of.get(match.end() - 1)
        if close is not None:
            found.append((text[match.end() : close].strip(), close + 1))
    return found


def strip_end_markers(text: str) -> str:
    """`text` without trailing whitespace and chat-template end markers."""
    text = text.rstrip()
    while True:
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                break
        else:
            return text


@dataclass
class FinalAnswer:
    """The final answer of a response, or why there is none.

    `answer` is the last candidate (None when there is none); `candidates` lists the distinct
    candidates (more than one means the response hedged); `trailing` is the text after it.
    """

    answer: str | None
    candidates: list[str]
    source: str  # "answer_tag" | "boxed" | "none"
    trailing: str
    boxed: bool = False  # the answer is the content of a `\\boxed{}` (else free text)


def final_answer(text: str, scan: TagScan | None = None, use_boxed: bool = True) -> FinalAnswer:
    """The last `<answer>` block (its boxes if it has any), else the last `\\boxed{}`."""
    scan = scan if scan is not None else scan_tags(text)
    answers = scan.named("answer")
    if answers:
        block = answers[-1]
        inner = text[block.inner_start : block.inner_end]
        trailing = strip_end_markers(text[block.end :])
        boxes = [content for content, _ in boxed_contents(inner)] if use_boxed else []
        candidates = _distinct(boxes or [inner.strip()])
        if not candidates:
            return FinalAnswer(None, [], "answer_tag", trailing)
        return FinalAnswer(candidates[-1], candidates, "answer_tag", trailing, bool(boxes))
    if use_boxed:
        region = answer_region(text, scan)
        boxes = boxed_contents(region)
        if boxes:
            candidates = _distinct([content for content, _ in boxes])
            trailing = strip_end_markers(region[boxes[-1][1] :])
            last = boxes[-1][0] or None
            return FinalAnswer(last, candidates, "boxed", trailing, True)
    return FinalAnswer(None, [], "none", "")


def _distinct(candidates: list[str]) -> list[str]:
    """Non-empty candidates, whitespace-normalised, first occurrence order, last one last."""
    seen: dict[str, None] = {}
    for candidate in candidates:
        key = " ".join(candidate.split())
        if key:
            seen.pop(key, None)
            seen[key] = None
    return list(seen)


def extract_program(text: str, scan: TagScan | None = None) -> str | None:
    """The final program: the last Python code fence of the final answer region.

    Inside an `<answer>` block a bare program (no fence) counts too. Tool-call code blocks are
    opaque and never taken as the answer.
    """
    scan = scan if scan is not None else scan_tags(text)
    answers = scan.named("answer")
    if answers:
        region = text[answers[-1].inner_start : answers[-1].inner_end]
    else:
        region = answer_region(text, scan)
    fences = [
        body for lang, body in _FENCE_RE.findall(region) if lang.lower() in _PYTHON_FENCE_LANGS
    ]
    if fences:
        return fences[-1] if fences[-1].strip() else None
    if answers and region.strip():
        return region.strip("\n")
    return None
