"""SearchEngine: request checks, defaults, caching and admission, on a real small index."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agentrl.common.config import SearchConfig
from agentrl.search.engine import InvalidRequest, NotFound, NotReady, Overloaded, SearchEngine
from agentrl.search.retriever import SearchIndex
from agentrl.search.service_metrics import SearchMetrics


def make_engine(index_dir: Path, **overrides) -> SearchEngine:
    engine = SearchEngine(
        SearchConfig(index_dir=index_dir, **overrides), SearchMetrics(CollectorRegistry())
    )
    engine.load_from_config()
    return engine


def test_defaults_come_from_config_and_the_index(bm25_index_dir: Path) -> None:
    engine = make_engine(bm25_index_dir, default_top_k=4)
    result = engine.retrieve(["Who founded the Guild?"])
    assert (result.index, result.method, len(result.results[0])) == ("world", "bm25", 4)
    assert result.version == SearchIndex(bm25_index_dir).version


def test_repeated_queries_are_served_from_the_cache(bm25_index_dir: Path) -> None:
    engine = make_engine(bm25_index_dir)
    first = engine.retrieve(["river town", "mayor of"], top_k=3)
    again = engine.retrieve(["mayor of", "a new query"], top_k=3)
    assert again.results[0] == first.results[1]
    assert (engine.cache.hits, engine.cache.misses) == (1, 3)
    engine.retrieve(["mayor of"], top_k=5)  # another top_k is another entry
    assert engine.cache.misses == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"queries": ["q"], "top_k": 0}, InvalidRequest, r"top_k must be an integer in \[1, 100\]"),
        ({"queries": ["q"], "top_k": 10_000}, InvalidRequest, "got 10000"),
        ({"queries": ["q"], "method": "magic"}, InvalidRequest, "unknown method 'magic'"),
        ({"queries": ["q"], "method": "dense"}, InvalidRequest, "rebuild it with --dense"),
        (
            {"queries": ["q"], "index": "other"},
            NotFound,
            "unknown index 'other'; this service has: world",
        ),
        ({"queries": ["x" * 5000]}, InvalidRequest, "at most 4096"),
        ({"queries": ["q"] * 513}, InvalidRequest, "send at most 512"),
    ],
)
def test_bad_requests_are_refused_with_what_to_change(
    bm25_index_dir: Path, kwargs: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        make_engine(bm25_index_dir).retrieve(**kwargs)


def test_blank_queries_match_nothing_without_failing_the_batch(bm25_index_dir: Path) -> None:
    engine = make_engine(bm25_index_dir)
    result = engine.retrieve(["river town", "", "  \n", "mayor of"], top_k=2)
    assert [len(hits) for hits in result.results] == [2, 0, 0, 2]
    assert result.results[0] == engine.retrieve(["river town"], top_k=2).results[0]
    assert engine.retrieve([]).results == []
    assert engine.cache.misses == 2  # blank queries never reach the cache or the index


def test_lookup_answers_none_per_unknown_key_and_access_refuses(bm25_index_dir: Path) -> None:
    engine = make_engine(bm25_index_dir, max_queries_per_request=4)
    index = engine.indexes["world"]
    [hit] = engine.retrieve(["river town"], top_k=1).results[0]
    url = index.url_of(hit.passage)
    _, found = engine.lookup([url, "nope", "", "x" * 5000])
    assert found[0].id == hit.passage.document_id and found[1:] == [None, None, None]
    assert engine.lookup([])[1] == []
    with pytest.raises(InvalidRequest, match="5 urls in one request; send at most 4"):
        engine.lookup(["a"] * 5)
    with pytest.raises(NotFound, match="'nope'"):
        engine.access([url, "nope"])


def test_requests_before_loading_are_unavailable(bm25_index_dir: Path) -> None:
    engine = SearchEngine(
        SearchConfig(index_dir=bm25_index_dir), SearchMetrics(CollectorRegistry())
    )
    assert not engine.ready
    with pytest.raises(NotReady, match="still loading"):
        engine.retrieve(["q"])


def test_requests_beyond_concurrency_and_queue_are_refused_at_once(bm25_index_dir: Path) -> None:
    engine = make_engine(bm25_index_dir, max_concurrency=1, queue_size=1)
    inside, release = threading.Semaphore(0), threading.Event()
    search = engine.batcher.run

    def slow_run(group, queries):
        inside.release()
        release.wait(5)
        return search(group, queries)

    engine.batcher.run = slow_run
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(engine.retrieve, [f"q{i}"]) for i in range(2)]
        assert inside.acquire(timeout=5) and inside.acquire(timeout=5)
        with pytest.raises(Overloaded, match="2 requests in progress"):
            engine.retrieve(["third"])
        release.set()
        assert all(len(f.result().results) == 1 for f in running)
    assert engine.retrieve(["fourth"]).results


def test_two_indexes_with_one_name_are_refused(bm25_index_dir: Path) -> None:
    with pytest.raises(ValueError, match="two indexes are named 'world'"):
        make_engine(bm25_index_dir, extra_index_dirs=[bm25_index_dir])
