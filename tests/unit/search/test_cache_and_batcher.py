"""The result cache (LRU, hit ratio) and the query batcher (batching, isolation, timeouts)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentrl.search.batcher import QueryBatcher, QueueTimeout
from agentrl.search.cache import ResultCache


def test_cache_evicts_least_recently_used_and_counts_hits() -> None:
    cache = ResultCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert (cache.get("b"), cache.get("a"), cache.get("c")) == (None, 1, 3)
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    assert cache.hit_ratio == pytest.approx(0.75)


def test_cache_of_size_zero_stores_nothing() -> None:
    cache = ResultCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and cache.hit_ratio == 0.0
    with pytest.raises(ValueError, match="0 disables"):
        ResultCache(-1)


class GatedSearch:
    """A search whose first batch blocks until released, recording every batch it runs."""

    def __init__(self) -> None:
        self.batches: list[tuple[object, list[str]]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def __call__(self, group, queries):
        self.batches.append((group, list(queries)))
        if len(self.batches) == 1:
            self.first_started.set()
            assert self.release.wait(5)
        if "boom" in queries:
            raise RuntimeError("search failed")
        return [f"{group}:{q}" for q in queries]


def test_queries_arriving_while_busy_run_as_one_batch_per_group() -> None:
    search = GatedSearch()
    batcher = QueryBatcher(search, max_parallel=1, max_batch=64, timeout_s=5)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.run, "g1", ["q0"])
        assert search.first_started.wait(5)
        later = [
            pool.submit(batcher.run, "g1" if i % 2 else "g2", [f"q{i}", f"r{i}"])
            for i in range(1, 7)
        ]
        while len(batcher._pending) < 12:  # every later request has queued its queries
            time.sleep(0.001)
        search.release.set()
        assert first.result() == ["g1:q0"]
        results = [f.result() for f in later]
    assert results[0] == ["g1:q1", "g1:r1"] and results[1] == ["g2:q2", "g2:r2"]
    # One batch of 12 queued queries, split into one call per group.
    assert [len(q) for _, q in search.batches] == [1, 6, 6]
    assert list(batcher.stats.sizes) == [1, 12]


def test_a_failing_group_fails_only_its_own_requests() -> None:
    search = GatedSearch()
    search.release.set()
    batcher = QueryBatcher(search, max_parallel=2, max_batch=8, timeout_s=5)
    assert batcher.run("g", ["ok"]) == ["g:ok"]
    with pytest.raises(RuntimeError, match="search failed"):
        batcher.run("g", ["boom"])
    assert batcher.run("g", ["fine"]) == ["g:fine"]


def test_requests_waiting_past_the_timeout_give_up_and_leave_the_queue() -> None:
    search = GatedSearch()
    batcher = QueryBatcher(search, max_parallel=1, max_batch=8, timeout_s=0.2)
    with ThreadPoolExecutor(2) as pool:
        blocker = pool.submit(batcher.run, "g", ["slow"])
        assert search.first_started.wait(5)
        with pytest.raises(QueueTimeout, match="no search slot"):
            batcher.run("g", ["waits"])
        assert len(batcher._pending) == 0
        search.release.set()
        assert blocker.result() == ["g:slow"]
    assert batcher.run("g", ["after"]) == ["g:after"]
