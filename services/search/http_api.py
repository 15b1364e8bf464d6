"""HTTP front of the search service, a drop-in for the Search-R1 and ASearcher local retrieval
servers, on the common FastAPI app (/healthz, /readyz, /metrics, auth).

`POST /retrieve` `{"queries": [...], "topk": 3, "return_scores": true}` ->
`{"result": [[{"document": {...}, "score": 1.2}, ...], ...]}`, one list per query, in order;
without `return_scores` each list holds the documents themselves. A document is
`{"id", "title", "text", "contents", "doc_id", "url"}`. Optional extras: `index`, `method`;
`top_k` is accepted for `topk`.

`POST /access` `{"urls": [...]}` -> `{"result": [document or null, ...]}`, one entry per url
(ASearcher's page access); `{"ids": [...]}` -> the same without nulls, or 404 naming the
unknown ids (as gRPC `Access`). A key is a passage id, a doc id, a corpus `url` or a synthetic
`agentrl://` url (retriever.py).

What the clients rely on, and a reader can too (docs/search.md has the field table):
- Search-R1 (`search_r1/llm_agent/generation.py`, `_batch_search` / `_passages2string`) reads
  `result[i][j]["document"]["contents"]` and renders its first line as the title, so
  `contents` is the corpus row's, byte for byte (`"Paris"\\n...` keeps its quotes);
- ASearcher (`AsyncSearchBrowserClient`) reads `contents` and `url` of every document and, on
  `/access`, `contents` of every non-null entry; it retries any non-2xx ten times, 10 s apart,
  so a miss is a null or an empty list, never an error status;
- a blank query (`<search></search>`) or one that matches nothing gets `[]` in its place, and
  a batch with no queries `{"result": []}`; only a malformed request as a whole is refused.

Errors answer with the engine's status (400 bad request, 404 unknown index or id, 429
overloaded, 503 loading) and `{"detail": message, "code": gRPC status name}`; a body that is
not the expected JSON is a 400 too (not FastAPI's 422), with the field at fault.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from agentrl.common.http import create_app
from agentrl.search.corpus import Passage
from agentrl.search.engine import InvalidRequest, SearchEngine, SearchError
from agentrl.search.retriever import SearchIndex
from agentrl.search.workers import PID_HEADER


class RetrieveBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queries: list[str]
    topk: int | None = Field(default=None, validation_alias=AliasChoices("topk", "top_k"))
    return_scores: bool = False
    index: str = ""
    method: str = ""


class AccessBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[str] | None = None
    urls: list[str] | None = None
    index: str = ""


def document(index: SearchIndex, passage: Passage) -> dict[str, str]:
    return {
        "id": passage.id,
        "title": passage.title,
        "text": passage.text,
        "contents": passage.contents,
        "doc_id": passage.document_id,
        "url": index.url_of(passage),
    }


def _error(exc: SearchError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "code": exc.grpc_code}, status_code=exc.http_status)


def create_search_app(engine: SearchEngine, **app_kwargs: Any) -> FastAPI:
    """The service's FastAPI app; `app_kwargs` go to `agentrl.common.http.create_app`."""
    app = create_app("search", ready=lambda: engine.ready, **app_kwargs)
    # Which worker answered (search.workers > 1 share the port; workers.py).
    worker = {PID_HEADER: str(os.getpid())}

    @app.exception_handler(RequestValidationError)
    def bad_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _error(InvalidRequest(f"malformed request body: {problems}"))

    @app.post("/retrieve")
    def retrieve(body: RetrieveBody) -> JSONResponse:
        try:
            result = engine.retrieve(
                body.queries, body.topk, body.index, body.method, transport="http"
            )
        except SearchError as exc:
            return _error(exc)
        index = engine.indexes[result.index]
        if body.return_scores:
            lists = [
                [{"document": document(index, h.passage), "score": h.score} for h in hits]
                for hits in result.results
            ]
        else:
            lists = [[document(index, h.passage) for h in hits] for hits in result.results]
        return JSONResponse(
            {
                "result": lists,
                "index": result.index,
                "index_version": result.version,
                "method": result.method,
            },
            headers=worker,
        )

    @app.post("/access")
    def access(body: AccessBody) -> JSONResponse:
        if (body.ids is None) == (body.urls is None):
            return _error(
                InvalidRequest('send either "urls" (null for an unknown one) or "ids" (404)')
            )
        try:
            if body.urls is not None:
                index, found = engine.lookup(body.urls, body.index, transport="http")
            else:
                index, passages = engine.access(body.ids, body.index, transport="http")
                found = list(passages)
        except SearchError as exc:
            return _error(exc)
        return JSONResponse(
            {
                "result": [None if p is None else document(index, p) for p in found],
                "index_version": index.version,
            },
            headers=worker,
        )

    return app
