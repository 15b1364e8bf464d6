"""The search service's core, shared by the gRPC and HTTP fronts: checks, cache, batching, limits.

`SearchEngine.retrieve` / `.access` take plain Python values and raise a `SearchError` whose
`grpc_code` and `http_status` the two fronts translate, so both give the same answers and the
same errors. Order of work for a Retrieve:

1. admission: at most `max_concurrency + queue_size` requests inside at once, else
   RESOURCE_EXHAUSTED (HTTP 429) at once;
2. checks: known index, method available in it, 1 <= top_k <= max_top_k, at most N queries
   of bounded length (INVALID_ARGUMENT / 400, NOT_FOUND / 404 for an unknown index);
3. a blank query matches nothing: its result is empty, it never reaches the index (an agent's
   `<search></search>` is a move of the policy, not a malformed request, and Search-R1's
   client sends it in a batch with others; a batch with no query at all is answered empty);
4. cache: each other query looked up under (index version, method, top_k, query);
5. the misses go through the batcher (batcher.py), then into the cache.

`access` answers every key or refuses the request (NOT_FOUND); `lookup` answers None for a key
nothing answers to (ASearcher's `/access`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agentrl.common.config import SearchConfig
from agentrl.search.batcher import QueryBatcher, QueueTimeout
from agentrl.search.cache import ResultCache
from agentrl.search.corpus import MAX_URL_CHARS, Passage
from agentrl.search.retriever import METHODS, Hit, SearchIndex, UnknownIdsError
from agentrl.search.service_metrics import SearchMetrics


class SearchError(Exception):
    """A request the service refuses; `grpc_code` (a grpc.StatusCode name) and `http_status`."""

    grpc_code = "INTERNAL"
    http_status = 500


class InvalidRequest(SearchError):
    grpc_code, http_status = "INVALID_ARGUMENT", 400


class NotFound(SearchError):
    grpc_code, http_status = "NOT_FOUND", 404


class Overloaded(SearchError):
    grpc_code, http_status = "RESOURCE_EXHAUSTED", 429


class NotReady(SearchError):
    grpc_code, http_status = "UNAVAILABLE", 503


@dataclass(frozen=True)
class RetrieveResult:
    index: str
    version: str
    method: str
    results: list[tuple[Hit, ...]]


class SearchEngine:
    """Serves loaded indexes; `add_index` them (or `load_from_config`), then answer requests."""

    def __init__(self, config: SearchConfig, metrics: SearchMetrics | None = None):
        self.config = config
        self.metrics = metrics or SearchMetrics()
        self.indexes: dict[str, SearchIndex] = {}
        self.default_index = ""
        self.cache = ResultCache(config.cache_size)
        self.batcher = QueryBatcher(
            self._search_group,
            config.search_threads,
            config.max_batch_queries,
            config.queue_timeout_s,
            on_batch=self.metrics.batch_size.observe,
        )
        self._admitted = 0
        self._admit_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return bool(self.indexes)

    def add_index(self, index: SearchIndex) -> None:
        if index.name in self.indexes:
            raise ValueError(f"two indexes are named {index.name!r}; rebuild one with --name")
        self.indexes[index.name] = index
        self.default_index = self.default_index or index.name
        self.metrics.passages.labels(index.name).set(index.num_passages)

    def load_from_config(self) -> None:
        """Open `index_dir` (the default) and every `extra_index_dirs` entry."""
        for directory in [self.config.index_dir, *self.config.extra_index_dirs]:
            self.add_index(SearchIndex(directory))

    def _index(self, name: str) -> SearchIndex:
        if not self.indexes:
            raise NotReady("the search index is still loading; retry shortly")
        index = self.indexes.get(name or self.default_index)
        if index is None:
            raise NotFound(f"unknown index {name!r}; this service has: {', '.join(self.indexes)}")
        return index

    def _admit(self) -> None:
        with self._admit_lock:
            if self._admitted >= self.config.max_concurrency + self.config.queue_size:
                self.metrics.rejected.labels("overloaded").inc()
                raise Overloaded(
                    f"{self._admitted} requests in progress; retry with backoff or "
                    "add replicas (search.max_concurrency, search.queue_size)"
                )
            self._admitted += 1
            self.metrics.in_flight.set(self._admitted)

    def _release(self) -> None:
        with self._admit_lock:
            self._admitted -= 1
            self.metrics.in_flight.set(self._admitted)

    def retrieve(
        self,
        queries: Sequence[str],
        top_k: int | None = None,
        index: str = "",
        method: str = "",
        transport: str = "python",
    ) -> RetrieveResult:
        """Top passages per query; raises SearchError subclasses for refused requests."""
        started = time.perf_counter()
        self._admit()
        try:
            target = self._index(index)
            method = method or target.default_method
            top_k = self.config.default_top_k if top_k is None else top_k
            self._check_retrieve(target, queries, top_k, method)
            results: list[tuple[Hit, ...] | None] = []
            misses: list[int] = []
            for i, query in enumerate(queries):
                if not query.strip():
                    results.append(())
                    continue
                cached = self.cache.get((target.version, method, top_k, query))
                (self.metrics.cache_misses if cached is None else self.metrics.cache_hits).inc()
                results.append(cached)
                if cached is None:
                    misses.append(i)
            self.metrics.cache_hit_ratio.set(self.cache.hit_ratio)
            if misses:
                try:
                    found = self.batcher.run(
                        (target.name, method, top_k), [queries[i] for i in misses]
                    )
                except QueueTimeout as exc:
                    self.metrics.rejected.labels("queue_timeout").inc()
                    raise Overloaded(
                        f"{exc}; the service is saturated, retry with backoff"
                    ) from None
                for i, hits in zip(misses, found):
                    results[i] = hits
                    self.cache.put((target.version, method, top_k, queries[i]), hits)
            self.metrics.queries_of(target.name, method).inc(len(queries))
            return RetrieveResult(target.name, target.version, method, results)
        finally:
            self._release()
            self.metrics.latency_of("retrieve", transport).observe(time.perf_counter() - started)

    def _check_retrieve(
        self, index: SearchIndex, queries: Sequence[str], top_k: int, method: str
    ) -> None:
        limit = self.config.max_top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise InvalidRequest(f"top_k must be an integer in [1, {limit}], got {top_k!r}")
        if method not in METHODS:
            raise InvalidRequest(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if method not in index.methods:
            raise InvalidRequest(
                f"index {index.name!r} has no {method} retriever (it has "
                f"{', '.join(index.methods)}); rebuild it with --dense"
            )
        self._check_list("queries", queries, self.config.max_query_chars, blank_ok=True)

    def _check_list(
        self, what: str, values: Sequence[str], max_chars: int, blank_ok: bool = False
    ) -> None:
        if not values and not blank_ok:
            raise InvalidRequest(f"{what} is empty; send at least one")
        self._check_count(what, values)
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise InvalidRequest(f"{what}[{i}] is not a string")
            if not blank_ok and not value.strip():
                raise InvalidRequest(f"{what}[{i}] is empty; every entry needs text")
            if len(value) > max_chars:
                raise InvalidRequest(
                    f"{what}[{i}] has {len(value)} characters; at most {max_chars} are accepted"
                )

    def _check_count(self, what: str, values: Sequence[str]) -> None:
        most = self.config.max_queries_per_request
        if len(values) > most:
            raise InvalidRequest(f"{len(values)} {what} in one request; send at most {most}")

    def _search_group(
        self, group: tuple[str, str, int], queries: list[str]
    ) -> list[tuple[Hit, ...]]:
        name, method, top_k = group
        return [tuple(hits) for hits in self.indexes[name].retrieve(queries, top_k, method)]

    def access(
        self, ids: Sequence[str], index: str = "", transport: str = "python"
    ) -> tuple[SearchIndex, list[Passage]]:
        """Passages or whole documents by id, in order; NotFound names the unknown ids."""
        started = time.perf_counter()
        self._admit()
        try:
            target = self._index(index)
            self._check_list("ids", ids, MAX_URL_CHARS)
            try:
                return target, target.access(ids)
            except UnknownIdsError as exc:
                raise NotFound(str(exc)) from None
        finally:
            self._release()
            self.metrics.latency_of("access", transport).observe(time.perf_counter() - started)

    def lookup(
        self, keys: Sequence[str], index: str = "", transport: str = "python"
    ) -> tuple[SearchIndex, list[Passage | None]]:
        """As `access`, but None for each key nothing answers to (blank or too long included);
        only a bad request as a whole (too many keys, unknown index) is refused."""
        started = time.perf_counter()
        self._admit()
        try:
            target = self._index(index)
            self._check_count("urls", keys)
            known = [i for i, k in enumerate(keys) if k.strip() and len(k) <= MAX_URL_CHARS]
            found = target.lookup([keys[i] for i in known]) if known else []
            passages: list[Passage | None] = [None] * len(keys)
            for i, passage in zip(known, found, strict=True):
                passages[i] = passage
            return target, passages
        finally:
            self._release()
            self.metrics.latency_of("access", transport).observe(time.perf_counter() - started)
