"""Training prompts: loading a data set and walking it in a deterministic, resumable order.

A data set is JSONL (one object per line) or Parquet (one row per prompt) with the fields

    prompt        str, non-empty       what the policy is asked
    ground_truth  str (numbers are     what the verifier compares against (JSON or plain text)
                  turned into text)
    task_type     str, non-empty       selects the verifier: math | code | qa | ...
    tools         list[str], optional  tool names the agent may call (default: none)
    id            str, optional        stable prompt id (default: "<file stem>-<row number>")

Other fields are kept, as text, in `metadata`. A bad row raises ValueError naming the file,
the row (1-based line for JSONL, 0-based index for Parquet) and the field.

`EpochOrder` visits every item once per epoch in an order shuffled by (seed, epoch) alone, so
position (epoch, offset) fully determines what comes next: `state_dict()` goes into the
checkpoint and `load_state_dict()` resumes on the exact next item. Parquet needs pyarrow.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
KNOWN_FIELDS = ("prompt", "ground_truth", "task_type", "tools", "id")


@dataclass(frozen=True)
class PromptRow:
    """One training prompt of the data set."""

    prompt_id: str
    prompt: str
    ground_truth: str
    task_type: str
    tools: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def _parse_row(raw: Any, where: str, default_id: str) -> PromptRow:
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        message = f"{where}: expected an object with prompt, ground_truth, task_type; got {kind}"
        raise ValueError(message)  # noqa: TRY004 (bad input data)

    def text(name: str, required: bool = True) -> str:
        value = raw.get(name)
        if value is None:
            if required:
                raise ValueError(f"{where}: field {name!r} is missing; add it")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            message = f"{where}: field {name!r} must be a string, got {type(value).__name__}"
            raise ValueError(message)  # noqa: TRY004 (bad input data)
        return str(value)

    prompt, task_type = text("prompt"), text("task_type")
    for name, value in (("prompt", prompt), ("task_type", task_type)):
        if not value.strip():
            raise ValueError(f"{where}: field {name!r} is empty")
    tools = raw.get("tools") or []
    if hasattr(tools, "tolist"):  # a numpy array from Parquet
        tools = tools.tolist()
    if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
        raise ValueError(f"{where}: field 'tools' must be a list of tool names, got {tools!r}")
    metadata = {
        k: v if isinstance(v, str) else json.dumps(v, default=str)
        for k, v in raw.items()
        if k not in KNOWN_FIELDS and v is not None
    }
    return PromptRow(
        prompt_id=text("id", required=False) or default_id,
        prompt=prompt,
        ground_truth=text("ground_truth"),
        task_type=task_type,
        tools=tuple(tools),
        metadata=metadata,
    )


def load_prompts(path: str | Path) -> list[PromptRow]:
    """Every row of a `.jsonl` or `.parquet` file, validated (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"data file {path} not found; set data.train_path to a JSONL or Parquet file"
        )
    rows: list[PromptRow] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            rows.append(_parse_row(raw, where, f"{path.stem}-{number}"))
    elif path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                "or convert the file to JSONL"
            ) from None
        for index, raw in enumerate(pq.read_table(path).to_pylist()):
            rows.append(_parse_row(raw, f"{path} row {index}", f"{path.stem}-{index}"))
    else:
        raise ValueError(f"{path}: unknown data format {path.suffix!r}; use .jsonl or .parquet")
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


class EpochOrder(Generic[T]):
    """Items in a seeded shuffle per epoch; `take` continues where the last call stopped."""

    def __init__(self, items: Sequence[T], seed: int, shuffle: bool = True) -> None:
        if not items:
            raise ValueError("EpochOrder needs at least one item")
        self.items = items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.offset = 0
        """Items of the current epoch already handed out."""
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        if self.shuffle:
            # A string seed hashes with sha512 inside random.seed: stable across runs and
            # Python versions, and independent streams for every (seed, epoch).
            random.Random(f"agentrl-data:{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, count: int) -> list[T]:
        """The next `count` items, crossing into the next epoch (reshuffled) when needed."""
        if count <= 0:
            raise ValueError(f"count must be > 0, got {count}")
        batch = []
        while len(batch) < count:
            if self.offset == len(self._order):
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            batch.append(self.items[self._order[self.offset]])
            self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "offset": self.offset,
            "num_items": len(self.items),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_items"] != len(self.items) or state["seed"] != self.seed:
            raise ValueError(
                f"checkpointed data order was for {state['num_items']} items with seed "
                f"{state['seed']}; this data set has {len(self.items)} with seed {self.seed}: "
                "resume with the same data file and run.seed"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._permutation(self.epoch)
