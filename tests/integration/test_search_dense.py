"""Dense and hybrid retrieval for real: all-MiniLM-L6-v2 from its PyPI package, a faiss index,
served over gRPC and HTTP (slow: the model loads and encodes a small world on CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from agentrl.common.config import SearchConfig
from agentrl.common.grpc_client import create_channel
from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.search.indexer import build_index
from agentrl.search.main import RunningSearchService, start_search_service
from agentrl.search.qa_questions import make_qa_world, read_questions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dense-world")
    # Small: encoding costs ~8 ms per passage on two cores.
    make_qa_world(out, seed=5, num_passages=400, num_questions=120)
    manifest = build_index(out / "corpus.jsonl", out / "index", dense=True, progress=False)
    assert manifest["methods"] == ["bm25", "dense", "hybrid"]
    assert manifest["default_method"] == "hybrid"
    return out


@pytest.fixture(scope="module")
def service(world: Path) -> Iterator[RunningSearchService]:
    config = SearchConfig(grpc_port=0, http_port=0, index_dir=world / "index")
    running = start_search_service(config, registry=CollectorRegistry(), token=None)
    yield running
    running.stop(0)


def retrieve(service: RunningSearchService, queries: list[str], method: str, top_k: int):
    with create_channel(service.grpc_address, token=None) as channel:
        response = search_pb2_grpc.SearchServiceStub(channel).Retrieve(
            search_pb2.RetrieveRequest(queries=queries, top_k=top_k, method=method)
        )
    assert response.method == method
    return [[(p.id, p.score) for p in r.passages] for r in response.results]


@pytest.mark.parametrize("method", ["dense", "hybrid"])
def test_single_hop_recall_at_3(world: Path, service: RunningSearchService, method: str) -> None:
    questions = [q for q in read_questions(world / "train.jsonl") if q["hops"] == 1]
    results = retrieve(service, [q["question"] for q in questions], method, 3)
    found = sum(
        q["supporting_ids"][0] in {pid for pid, _ in hits} for q, hits in zip(questions, results)
    )
    # Invented names split into odd word pieces, so dense alone gets a lower bar than hybrid.
    assert found / len(questions) >= (0.9 if method == "hybrid" else 0.8), (method, found)


def test_dense_scores_are_cosines_and_transports_agree(world: Path, service) -> None:
    queries = [q["question"] for q in read_questions(world / "test.jsonl")[:10]]
    for method in ("dense", "hybrid"):
        over_grpc = retrieve(service, queries, method, 4)
        reply = httpx.post(
            f"{service.http_url}/retrieve",
            json={"queries": queries, "topk": 4, "method": method, "return_scores": True},
        ).json()
        assert [
            [(h["document"]["id"], h["score"]) for h in hits] for hits in reply["result"]
        ] == over_grpc
        scores = np.array([[s for _, s in hits] for hits in over_grpc])
        assert scores.shape == (10, 4) and np.all(np.diff(scores, axis=1) <= 1e-9)
        if method == "dense":
            assert np.all(scores <= 1.0 + 1e-5) and np.all(scores > -1.0)
    default = httpx.post(f"{service.http_url}/retrieve", json={"queries": queries[:1]}).json()
    assert default["method"] == "hybrid"
