"""Batching of concurrent queries: requests that arrive while the searchers are busy are
answered together, in one call per (index, method, top_k).

No timer: a request's queries go into a shared queue, and whichever waiting request finds a free
search slot takes up to `max_batch` queued queries (its own and others', oldest first) and runs
them. At low load every request runs at once (no added latency); under load the queue fills
while the slots work, so the next batch is larger. Dense retrieval gains most: one forward pass
of the encoder for the whole batch instead of one per query.

`max_parallel` slots bound the CPU work (about one per core); requests beyond them wait. A
request whose queries did not start within `timeout_s` gets `QueueTimeout`, and its queries
are withdrawn from the queue (queries another request already started still finish).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueTimeout(Exception):
    """The request waited longer than the batcher's timeout for a search slot."""


@dataclass(eq=False)
class Item:
    """One query waiting to run: `group` selects the batch call (index, method, top_k)."""

    group: Hashable
    query: str
    result: Any = None
    error: BaseException | None = None
    started: bool = False
    done: bool = False


# Batch sizes kept in `BatchStats.sizes`: enough to see batching at work, bounded memory.
RECENT_BATCHES = 1000


@dataclass
class BatchStats:
    batches: int = 0
    queries: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))


RunGroup = Callable[[Hashable, list[str]], Sequence[Any]]
"""Runs one group's queries; returns one result per query, in order."""


class QueryBatcher:
    def __init__(
        self,
        run_group: RunGroup,
        max_parallel: int,
        max_batch: int,
        timeout_s: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_parallel < 1 or max_batch < 1 or timeout_s <= 0:
            raise ValueError("batcher needs max_parallel >= 1, max_batch >= 1 and timeout_s > 0")
        self._run_group = run_group
        self._max_batch = max_batch
        self._timeout_s = timeout_s
        self._on_batch = on_batch
        self._free_slots = max_parallel
        self._pending: deque[Item] = deque()
        self._cond = threading.Condition()
        self.stats = BatchStats()

    def run(self, group: Hashable, queries: Sequence[str]) -> list[Any]:
        """Results for `queries` (in order); raises what the search raised, or QueueTimeout."""
        items = [Item(group, q) for q in queries]
        deadline = time.monotonic() + self._timeout_s
        with self._cond:
            self._pending.extend(items)
        while True:
            with self._cond:
                while not all(i.done for i in items) and (
                    self._free_slots == 0 or not self._pending
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 and not any(i.started for i in items):
                        for item in items:
                            self._pending.remove(item)
                        raise QueueTimeout(f"no search slot free within {self._timeout_s} s")
                    self._cond.wait(max(remaining, 0.05))
                if all(i.done for i in items):
                    break
                self._free_slots -= 1
                batch = [
                    self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))
                ]
                for item in batch:
                    item.started = True
            try:
                self._execute(batch)
            finally:
                with self._cond:
                    self._free_slots += 1
                    self.stats.batches += 1
                    self.stats.queries += len(batch)
                    self.stats.sizes.append(len(batch))
                    self._cond.notify_all()
        for item in items:
            if item.error is not None:
                raise item.error
        return [i.result for i in items]

    def _execute(self, batch: list[Item]) -> None:
        groups: dict[Hashable, list[Item]] = {}
        for item in batch:
            groups.setdefault(item.group, []).append(item)
        for group, items in groups.items():
            try:
                results = self._run_group(group, [i.query for i in items])
                for item, result in zip(items, results, strict=True):
                    item.result = result
            except BaseException as exc:  # noqa: BLE001 - handed to the request that owns it
                for item in items:
                    item.error = exc
            for item in items:
                item.done = True
        if self._on_batch is not None:
            self._on_batch(len(batch))
