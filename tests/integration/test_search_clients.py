"""Search-R1's and ASearcher's own client code paths against the running search service.

The requests and the parsing below are those the two projects publish, rewritten in a few
lines each (cited per function), not built from AgentRL's models: if the service's answers
drift from what those clients read, these tests fail the way the clients would (a KeyError, a
non-2xx that ASearcher retries ten times, a title rendered differently in the prompt).

The corpus mixes the formats users bring: Search-R1's `{"id", "contents": "\\"Title\\"\\ntext"}`
rows, rows with a `url` (ASearcher's wiki corpus; two passages of one page share it), and
AgentRL's own `{id, title, text, doc_id}`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from agentrl.common.config import SearchConfig
from agentrl.search.cli import index_app
from agentrl.search.main import RunningSearchService, start_search_service

VELNA_URL = "https://en.wikipedia.org/wiki/Velna_River"
CORPUS = [
    {"id": "0", "contents": '"Paris"\nParis is the capital and largest city of France.'},
    {"id": "1", "contents": '"Lyon"\nLyon is a city in France on the Rhone.'},
    {"id": "w1", "contents": '"Velna River"\nThe Velna river runs past Orford.', "url": VELNA_URL},
    {"id": "w2", "contents": '"Velna River"\nIts water is cold in spring.', "url": VELNA_URL},
    {
        "id": "o1",
        "title": "Orford",
        "text": "Orford is a town with a stone bridge.",
        "doc_id": "orford",
    },
]


def build(tmp: Path, out: str) -> Path:
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in CORPUS), encoding="utf-8")
    done = CliRunner().invoke(index_app, [str(corpus), "--out", str(tmp / out), "--name", "wiki"])
    assert done.exit_code == 0, done.output
    return tmp / out


def start(index_dir: Path) -> RunningSearchService:
    config = SearchConfig(grpc_port=0, http_port=0, index_dir=index_dir)
    return start_search_service(config, registry=CollectorRegistry(), token=None)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("client-corpus"), "index")


@pytest.fixture(scope="module")
def service(index_dir: Path) -> Iterator[RunningSearchService]:
    running = start(index_dir)
    yield running
    running.stop(0)


# --- Search-R1: PeterGriffinJin/Search-R1, search_r1/llm_agent/generation.py ------------------


def search_r1_queries(predictions: list[str]) -> list[str]:
    """`LLMGenerationManager.postprocess_predictions` + `execute_predictions`: the stripped text
    of the first <search> (or <answer>) tag; the queries of the `search` actions go out."""
    queries = []
    for prediction in predictions:
        match = re.search(r"<(search|answer)>(.*?)</\1>", prediction, re.DOTALL)
        if match and match.group(1) == "search":
            queries.append(match.group(2).strip())
    return queries


def search_r1_batch_search(retrieve_url: str, queries: list[str], topk: int = 3) -> list[str]:
    """`_batch_search` (its payload, `requests.post(...).json()`) then `batch_search`
    (`['result']`, one `_passages2string` per query)."""
    payload = {"queries": queries, "topk": topk, "return_scores": True}
    results = requests.post(retrieve_url, json=payload, timeout=30).json()["result"]
    return [search_r1_passages2string(result) for result in results]


def search_r1_passages2string(retrieval_result: list[dict]) -> str:
    """`_passages2string`: the first line of `contents` is the title, the rest the text."""
    reference = ""
    for idx, doc_item in enumerate(retrieval_result):
        content = doc_item["document"]["contents"]
        title = content.split("\n")[0]
        text = "\n".join(content.split("\n")[1:])
        reference += f"Doc {idx + 1}(Title: {title}) {text}\n"
    return reference


def test_search_r1_batch_with_empty_and_unmatched_queries(service) -> None:
    predictions = [
        "<think>capital?</think><search>capital of France</search>",
        "<search></search>",  # what a policy writes early in training
        "<search>zzqx wibble</search>",  # no term in the vocabulary
        "<answer>Paris</answer>",
        "<search> Lyon city </search>",
    ]
    queries = search_r1_queries(predictions)
    assert queries == ["capital of France", "", "zzqx wibble", "Lyon city"]
    results = search_r1_batch_search(f"{service.http_url}/retrieve", queries)
    assert len(results) == len(queries)  # execute_predictions asserts this
    assert results[0].startswith(
        'Doc 1(Title: "Paris") Paris is the capital and largest city of France.\n'
    )
    assert results[1] == results[2] == ""  # `<information></information>`, as pyserini's BM25
    assert results[3].startswith('Doc 1(Title: "Lyon") Lyon is a city in France on the Rhone.\n')


def test_search_r1_step_where_nobody_searches_still_gets_a_result_list(service) -> None:
    # execute_predictions calls batch_search even when no prediction is a search.
    assert search_r1_batch_search(f"{service.http_url}/retrieve", []) == []


def test_search_r1_retrieval_server_document_fields(service) -> None:
    # search_r1/search/retrieval_server.py (BM25Retriever._search): `title` is the first line of
    # `contents` without its quotes, `text` the rest; `contents` as in the corpus.
    payload = {"queries": ["Paris capital"], "topk": 1, "return_scores": True}
    reply = requests.post(f"{service.http_url}/retrieve", json=payload, timeout=30).json()
    [[hit]] = reply["result"]
    assert isinstance(hit["score"], float)
    document = hit["document"]
    assert document["contents"] == CORPUS[0]["contents"]
    assert (document["title"], document["text"]) == tuple(CORPUS[0]["contents"][1:].split('"\n'))


# --- ASearcher: inclusionAI/ASearcher, AsyncSearchBrowserClient ------------------------------
# tools/search_utils.py (the same class is in AReaL/ASearcher/utils/search_utils.py). Each
# method retries any exception ten times, 10 s apart, then raises; one attempt is run here, so
# an exception is exactly what would have sent the client into its retries.


async def asearcher_query_async(server_addr: str, req_meta: dict) -> list[dict]:
    """`query_async`: POST /retrieve, `raise_for_status`, then per query the `contents` and
    `url` of every document (the client's `documents` and `urls`)."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server_addr}/retrieve", json=req_meta, timeout=timeout) as response,
    ):
        response.raise_for_status()
        res = await response.json()  # aiohttp refuses a body not labelled JSON
        return [
            {"documents": [r["contents"] for r in result], "urls": [r["url"] for r in result]}
            for result in res["result"]
        ]


async def asearcher_access_async(server_addr: str, urls: list[str]) -> list[dict]:
    """`access_async`: POST /access `{"urls": [...]}`, then per entry its `contents`, or ""
    for a null one."""
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server_addr}/access", json={"urls": urls}, timeout=timeout) as response,
    ):
        response.raise_for_status()
        res = await response.json()
        return [{"page": "" if r is None else r["contents"]} for r in res["result"]]


def asearcher_search(server_addr: str, action: str, topk: int = 10) -> dict:
    """ASearcher/utils/search_tool.py `SearchToolBox.step`: the <search> query, one per request,
    `return_scores` false; the agent reads `response[0]["documents"]` and `["urls"]`."""
    query = action.split("<search>")[-1].split("</search>")[0].strip()
    req_meta = {"queries": [query], "topk": topk, "return_scores": False}
    return asyncio.run(asearcher_query_async(server_addr, req_meta))[0]


def test_asearcher_search_then_access_every_url(service) -> None:
    found = asearcher_search(service.http_url, "<search>Velna river water Orford</search>")
    assert len(found["documents"]) == len(found["urls"]) == 3
    velna = dict(zip(found["urls"], found["documents"]))
    assert velna[VELNA_URL] in (CORPUS[2]["contents"], CORPUS[3]["contents"])
    [orford_url] = [u for u in found["urls"] if u != VELNA_URL]
    pages = asyncio.run(asearcher_access_async(service.http_url, [VELNA_URL, orford_url]))
    # The page of a url is every passage that carries it, in corpus order.
    assert pages[0]["page"] == (
        '"Velna River"\nThe Velna river runs past Orford.\n\nIts water is cold in spring.'
    )
    assert pages[1]["page"] == "Orford\nOrford is a town with a stone bridge."


def test_asearcher_access_answers_per_url_with_null_for_unknown(service) -> None:
    paris = asearcher_search(service.http_url, "<search>Paris</search>", topk=1)
    [paris_url] = paris["urls"]
    urls = ["https://example.org/not-in-the-corpus", paris_url, "", "agentrl://other/0"]
    reply = requests.post(f"{service.http_url}/access", json={"urls": urls}, timeout=30)
    assert reply.status_code == 200 and reply.json()["result"][0] is None
    pages = asyncio.run(asearcher_access_async(service.http_url, urls))
    assert [p["page"] for p in pages] == ["", CORPUS[0]["contents"], "", ""]


def test_asearcher_empty_and_unmatched_queries_get_no_documents(service) -> None:
    for action in ["<search></search>", "<search>zzqx wibble</search>"]:
        found = asearcher_search(service.http_url, action)
        assert (found["documents"], found["urls"]) == ([], [])


def test_urls_stay_the_same_after_a_rebuild_and_restart(service, tmp_path: Path) -> None:
    query = "<search>Paris Lyon Orford Velna</search>"
    before = asearcher_search(service.http_url, query)["urls"]
    again = start(build(tmp_path, "rebuilt"))
    try:
        assert asearcher_search(again.http_url, query)["urls"] == before
    finally:
        again.stop(0)
    assert len(set(before)) == 4  # one per document: Paris, Lyon, the Velna page, Orford
