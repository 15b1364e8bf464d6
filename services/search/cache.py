"""A bounded, thread-safe LRU cache of per-query results, with hit/miss counts.

Keys carry the index version (see engine.py), so results of an old index are never served for
a new one: they age out of the LRU instead of being invalidated explicitly. Values are treated
as immutable (tuples of frozen hits), so they are shared between requests without copying.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class ResultCache:
    """At most `max_entries` entries, least recently used evicted first; 0 disables caching."""

    def __init__(self, max_entries: int):
        if max_entries < 0:
            raise ValueError(f"cache size must be >= 0 (0 disables it), got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        """The cached value or None; counts a hit or a miss (nothing when disabled)."""
        if self.max_entries == 0:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups since start (0.0 before the first lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0
