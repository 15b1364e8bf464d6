"""HTTP front of the search service, compatible with the Search-R1 and ASearcher local
retrieval servers, on the common FastAPI app (/healthz, /readyz, /metrics, auth).

`POST /retrieve` `{"queries": [...], "topk": 3, "return_scores": true}` ->
`{"result": [[{"document": {...}, "score": 1.2}, ...], ...]}`, one list per query; without
`return_scores` each list holds the documents themselves (Search-R1's shape). A document is
`{"id", "title", "text", "contents", "doc_id"}` where `contents` is `title\\ntext`, the field
Search-R1's agents read. Optional extras: `index`, `method`; `top_k` is accepted for `topk`.

`POST /access` `{"ids": [...]}` (or ASearcher's `{"urls": [...]}`) -> `{"result": [document]}`,
a passage by its id or a whole document by its doc id.

Errors answer with the engine's status (400 bad request, 404 unknown index or id, 429
overloaded, 503 loading) and `{"detail": message, "code": gRPC status name}`; a body that is
not the expected JSON is a 400 too (not FastAPI's 422), with the field at fault.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from agentrl.common.http import create_app
from agentrl.search.corpus import Passage
from agentrl.search.engine import InvalidRequest, SearchEngine, SearchError


class RetrieveBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queries: list[str]
    topk: int | None = Field(default=None, validation_alias=AliasChoices("topk", "top_k"))
    return_scores: bool = False
    index: str = ""
    method: str = ""


class AccessBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[str] = Field(default_factory=list, validation_alias=AliasChoices("ids", "urls"))
    index: str = ""


def document(passage: Passage) -> dict[str, str]:
    return {
        "id": passage.id,
        "title": passage.title,
        "text": passage.text,
        "contents": passage.contents,
        "doc_id": passage.document_id,
    }


def _error(exc: SearchError) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "code": exc.grpc_code}, status_code=exc.http_status)


def create_search_app(engine: SearchEngine, **app_kwargs: Any) -> FastAPI:
    """The service's FastAPI app; `app_kwargs` go to `agentrl.common.http.create_app`."""
    app = create_app("search", ready=lambda: engine.ready, **app_kwargs)

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
        if body.return_scores:
            lists = [
                [{"document": document(h.passage), "score": h.score} for h in hits]
                for hits in result.results
            ]
        else:
            lists = [[document(h.passage) for h in hits] for hits in result.results]
        return JSONResponse(
            {
                "result": lists,
                "index": result.index,
                "index_version": result.version,
                "method": result.method,
            }
        )

    @app.post("/access")
    def access(body: AccessBody) -> JSONResponse:
        try:
            index, passages = engine.access(body.ids, body.index, transport="http")
        except SearchError as exc:
            return _error(exc)
        return JSONResponse(
            {"result": [document(p) for p in passages], "index_version": index.version}
        )

    return app
