"""How many search worker processes `search.workers` gives (services/search/workers.py)."""

from __future__ import annotations

import json
from pathlib import Path

from agentrl.common.config import SearchConfig
from agentrl.search import workers
from agentrl.search.indexer import FORMAT_VERSION, MANIFEST


def index_of(tmp_path: Path, passages: int) -> Path:
    (tmp_path / MANIFEST).write_text(
        json.dumps({"format": FORMAT_VERSION, "num_passages": passages})
    )
    return tmp_path


def test_an_explicit_count_is_kept(tmp_path) -> None:
    config = SearchConfig(index_dir=index_of(tmp_path, 10), workers=3)
    assert workers.resolve_workers(config) == 3


def test_auto_is_one_for_a_small_or_missing_index(tmp_path) -> None:
    small = index_of(tmp_path, workers.AUTO_MIN_PASSAGES - 1)
    assert workers.resolve_workers(SearchConfig(index_dir=small)) == 1
    assert workers.resolve_workers(SearchConfig(index_dir=tmp_path / "missing")) == 1


def test_auto_is_one_per_core_up_to_the_cap_for_a_large_index(tmp_path, monkeypatch) -> None:
    large = SearchConfig(index_dir=index_of(tmp_path, workers.AUTO_MIN_PASSAGES))
    monkeypatch.setattr(workers, "usable_cores", lambda: 3)
    assert workers.resolve_workers(large) == 3
    monkeypatch.setattr(workers, "usable_cores", lambda: 64)
    assert workers.resolve_workers(large) == workers.MAX_AUTO_WORKERS
