"""The search service for real: a generated QA world indexed by the CLI, served over gRPC and
HTTP on loopback, queried through both, restarted, replicated, and run by its entrypoint."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from agentrl.common.config import SearchConfig
from agentrl.common.grpc_client import NO_RETRY, create_channel
from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.search.cli import data_app, index_app
from agentrl.search.main import RunningSearchService, load_indexes, start_search_service
from agentrl.search.qa_questions import read_questions

SERVICE = "agentrl.search.v1.SearchService"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search-world")
    runner = CliRunner()
    made = runner.invoke(
        data_app,
        ["--seed", "11", "--out", str(out), "--num-passages", "1500", "--num-questions", "300"],
    )
    assert made.exit_code == 0, made.output
    indexed = runner.invoke(
        index_app, [str(out / "corpus.jsonl"), "--out", str(out / "index"), "--name", "qa"]
    )
    assert indexed.exit_code == 0, indexed.output
    assert "indexed 15" in indexed.output and "name qa" in indexed.output
    return out


def start(index_dir: Path, **overrides) -> RunningSearchService:
    config = SearchConfig(grpc_port=0, http_port=0, index_dir=index_dir, **overrides)
    return start_search_service(config, registry=CollectorRegistry(), token=None)


@pytest.fixture(scope="module")
def service(world: Path) -> Iterator[RunningSearchService]:
    running = start(world / "index")
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def stub(service: RunningSearchService) -> Iterator[search_pb2_grpc.SearchServiceStub]:
    with create_channel(service.grpc_address, token=None, retry=NO_RETRY) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def grpc_lists(stub, queries: list[str], top_k: int, **kw) -> list[list[tuple]]:
    response = stub.Retrieve(search_pb2.RetrieveRequest(queries=queries, top_k=top_k, **kw))
    return [
        [(p.id, p.title, p.text, p.doc_id, p.url, p.score) for p in r.passages]
        for r in response.results
    ]


def http_lists(url: str, queries: list[str], top_k: int) -> list[list[tuple]]:
    reply = httpx.post(
        f"{url}/retrieve", json={"queries": queries, "topk": top_k, "return_scores": True}
    )
    assert reply.status_code == 200, reply.text
    return [
        [
            (
                h["document"]["id"],
                h["document"]["title"],
                h["document"]["text"],
                h["document"]["doc_id"],
                h["document"]["url"],
                h["score"],
            )
            for h in hits
        ]
        for hits in reply.json()["result"]
    ]


def test_single_hop_supporting_passage_in_top_3_for_90_percent(world, stub) -> None:
    questions = [
        q
        for q in read_questions(world / "test.jsonl") + read_questions(world / "train.jsonl")
        if q["hops"] == 1
    ]
    results = grpc_lists(stub, [q["question"] for q in questions], 3)
    found = sum(
        q["supporting_ids"][0] in {hit[0] for hit in hits} for q, hits in zip(questions, results)
    )
    assert len(questions) >= 100 and found / len(questions) >= 0.9


def test_grpc_and_http_return_identical_results(world, stub, service) -> None:
    queries = [q["question"] for q in read_questions(world / "test.jsonl")]
    over_grpc = grpc_lists(stub, queries, 5)
    assert over_grpc == http_lists(service.http_url, queries, 5)
    assert all(len(hits) == 5 for hits in over_grpc)
    plain = httpx.post(f"{service.http_url}/retrieve", json={"queries": queries[:1]}).json()
    assert [d["id"] for d in plain["result"][0]] == [h[0] for h in over_grpc[0][:3]]
    assert plain["result"][0][0]["contents"].split("\n", 1)[0] == over_grpc[0][0][1]
    assert plain["index"] == "qa" and plain["method"] == "bm25"


def test_blank_queries_and_empty_batches_get_empty_results_on_both(stub, service) -> None:
    queries = ["river", "", "   "]
    over_grpc = grpc_lists(stub, queries, 2)
    assert [len(hits) for hits in over_grpc] == [2, 0, 0]
    assert http_lists(service.http_url, queries, 2) == over_grpc
    assert grpc_lists(stub, [], 2) == http_lists(service.http_url, [], 2) == []


BAD_REQUESTS = [
    (
        {"queries": ["q"], "top_k": 0},
        "INVALID_ARGUMENT",
        400,
        "top_k must be an integer in [1, 100]",
    ),
    ({"queries": ["q"], "top_k": 10_000}, "INVALID_ARGUMENT", 400, "got 10000"),
    (
        {"queries": ["q"], "index": "wiki"},
        "NOT_FOUND",
        404,
        "unknown index 'wiki'; this service has: qa",
    ),
    ({"queries": ["q"], "method": "hybrid"}, "INVALID_ARGUMENT", 400, "rebuild it with --dense"),
]


@pytest.mark.parametrize(("fields", "code", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_the_same_clear_error_on_both(
    stub, service, fields, code, status, message
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Retrieve(search_pb2.RetrieveRequest(**fields))
    assert info.value.code() == grpc.StatusCode[code] and message in info.value.details()
    body = {("topk" if k == "top_k" else k): v for k, v in fields.items()}
    reply = httpx.post(f"{service.http_url}/retrieve", json=body)
    assert reply.status_code == status
    assert reply.json() == {"detail": info.value.details(), "code": code}


def test_malformed_http_bodies_are_400_with_the_field(service) -> None:
    reply = httpx.post(f"{service.http_url}/retrieve", json={"queries": "not a list"})
    assert reply.status_code == 400 and "queries" in reply.json()["detail"]


def test_access_passages_and_documents_on_both(world, stub, service) -> None:
    question = read_questions(world / "test.jsonl")[0]
    pid = question["supporting_ids"][0]
    entity = question["entity_ids"][0]
    response = stub.Access(search_pb2.AccessRequest(ids=[pid, entity]))
    passage, document = response.passages
    assert (passage.id, passage.doc_id, document.id) == (pid, entity, entity)
    assert passage.text in document.text and len(document.text) > len(passage.text)
    # A passage's url (as HTTP's) names its document, which Access takes like an id.
    assert passage.url == document.url and passage.url.startswith("agentrl://")
    (by_url,) = stub.Access(search_pb2.AccessRequest(ids=[passage.url])).passages
    assert (by_url.id, by_url.text) == (entity, document.text)
    reply = httpx.post(f"{service.http_url}/access", json={"urls": [pid, entity]}).json()
    assert [(d["id"], d["text"]) for d in reply["result"]] == [
        (pid, passage.text),
        (entity, document.text),
    ]
    with pytest.raises(grpc.RpcError) as info:
        stub.Access(search_pb2.AccessRequest(ids=[pid, "p9999999"]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "'p9999999'" in info.value.details()
    assert httpx.post(f"{service.http_url}/access", json={"ids": ["nope"]}).status_code == 404


def test_health_readiness_and_metrics(stub, service) -> None:
    with grpc.insecure_channel(service.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{service.http_url}/readyz").status_code == 200
    for _ in range(3):
        grpc_lists(stub, ["metrics probe query"], 2)
    text = httpx.get(f"{service.http_url}/metrics").text
    ratio = float(re.search(r"^agentrl_search_cache_hit_ratio (\S+)$", text, re.MULTILINE).group(1))
    assert ratio > 0
    assert re.search(
        r'^agentrl_search_queries_total\{index="qa",method="bm25"\} \d', text, re.MULTILINE
    )
    assert 'agentrl_search_request_duration_seconds_count{api="retrieve",transport="grpc"}' in text


def test_concurrent_clients_get_the_same_answers_as_one_client(world, stub) -> None:
    queries = [q["question"] for q in read_questions(world / "train.jsonl")[:64]]
    expected = grpc_lists(stub, queries, 3, method="bm25")
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda q: grpc_lists(stub, [q], 3)[0], queries))
    assert got == expected


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_restart_and_replicas_serve_the_same_read_only_index(world, stub) -> None:
    queries = [q["question"] for q in read_questions(world / "test.jsonl")[:20]]
    expected = grpc_lists(stub, queries, 4)
    before = digest(world / "index")
    replicas = [start(world / "index"), start(world / "index")]
    try:
        for replica in replicas:
            with create_channel(replica.grpc_address, token=None) as channel:
                assert (
                    grpc_lists(search_pb2_grpc.SearchServiceStub(channel), queries, 4) == expected
                )
    finally:
        for replica in replicas:
            replica.stop(0)
    assert digest(world / "index") == before, "serving must not write to the index directory"


def test_not_ready_until_the_index_is_loaded(world) -> None:
    config = SearchConfig(grpc_port=0, http_port=0, index_dir=world / "index")
    running = start_search_service(config, load=False, registry=CollectorRegistry(), token=None)
    try:
        assert httpx.get(f"{running.http_url}/readyz").status_code == 503
        with create_channel(running.grpc_address, token=None, retry=NO_RETRY) as channel:
            with pytest.raises(grpc.RpcError) as info:
                search_pb2_grpc.SearchServiceStub(channel).Retrieve(
                    search_pb2.RetrieveRequest(queries=["q"])
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            load_indexes(running)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert httpx.get(f"{running.http_url}/readyz").status_code == 200
    finally:
        running.stop(0)


def test_auth_token_guards_both_transports(world) -> None:
    config = SearchConfig(grpc_port=0, http_port=0, index_dir=world / "index")
    running = start_search_service(config, registry=CollectorRegistry(), token="t0ken")
    try:
        body = {"queries": ["river"]}
        assert httpx.post(f"{running.http_url}/retrieve", json=body).status_code == 401
        headers = {"Authorization": "Bearer t0ken"}
        assert (
            httpx.post(f"{running.http_url}/retrieve", json=body, headers=headers).status_code
            == 200
        )
        with create_channel(running.grpc_address, token=None, retry=NO_RETRY) as channel:
            with pytest.raises(grpc.RpcError) as info:
                search_pb2_grpc.SearchServiceStub(channel).Retrieve(
                    search_pb2.RetrieveRequest(queries=["river"])
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(0)


@pytest.mark.slow
def test_entrypoint_serves_until_sigterm(world) -> None:
    env = {
        **os.environ,
        "AGENTRL__SEARCH__GRPC_PORT": "0",
        "AGENTRL__SEARCH__HTTP_PORT": "0",
        "AGENTRL__SEARCH__INDEX_DIR": str(world / "index"),
    }
    env.pop("AGENTRL_AUTH_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "agentrl.common.cli", "serve", "search"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "search service ready" not in line:
            assert time.monotonic() < deadline and process.poll() is None, "no ready line"
            line = process.stderr.readline()
        address = re.search(r"grpc=(\S+)", line).group(1)
        with create_channel(address, token=None) as channel:
            assert grpc_lists(search_pb2_grpc.SearchServiceStub(channel), ["river"], 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_entrypoint_without_an_index_exits_with_what_to_run(tmp_path) -> None:
    env = {
        **os.environ,
        "AGENTRL__SEARCH__GRPC_PORT": "0",
        "AGENTRL__SEARCH__HTTP_PORT": "0",
        "AGENTRL__SEARCH__INDEX_DIR": str(tmp_path / "missing"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agentrl.common.cli", "serve", "search"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "build one with `agentrl search index CORPUS.jsonl --out DIR`" in done.stderr
    assert "Traceback" not in done.stderr
