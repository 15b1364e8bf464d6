"""gRPC front of the search service: `agentrl.search.v1.SearchService` over `SearchEngine`.

Refused requests end with the engine's status code and message (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAVAILABLE while the index loads); an unexpected failure is logged with
its traceback and ends as INTERNAL without internals in the message.
"""

from __future__ import annotations

import logging
import os

import grpc

from agentrl.proto.search.v1 import search_pb2, search_pb2_grpc
from agentrl.search.corpus import Passage
from agentrl.search.engine import SearchEngine, SearchError
from agentrl.search.retriever import SearchIndex
from agentrl.search.workers import PID_HEADER

SERVICE_NAME = "agentrl.search.v1.SearchService"

log = logging.getLogger(__name__)


def passage_pb(index: SearchIndex, passage: Passage, score: float = 0.0) -> search_pb2.Passage:
    return search_pb2.Passage(
        id=passage.id,
        title=passage.title,
        text=passage.text,
        score=score,
        doc_id=passage.document_id,
        url=index.url_of(passage),  # the same `url` as HTTP /retrieve's documents
    )


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, engine: SearchEngine):
        self.engine = engine
        # Which worker answered (search.workers > 1 share the port; workers.py).
        self._worker = ((PID_HEADER, str(os.getpid())),)

    def Retrieve(self, request: search_pb2.RetrieveRequest, context: grpc.ServicerContext):
        top_k = request.top_k if request.HasField("top_k") else None
        try:
            result = self.engine.retrieve(
                list(request.queries), top_k, request.index, request.method, transport="grpc"
            )
        except SearchError as exc:
            context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
        except Exception:
            log.exception("Retrieve failed")
            context.abort(grpc.StatusCode.INTERNAL, "search failed; see the service log")
        index = self.engine.indexes[result.index]
        context.set_trailing_metadata(self._worker)
        return search_pb2.RetrieveResponse(
            results=[
                search_pb2.QueryResult(
                    passages=[passage_pb(index, h.passage, h.score) for h in hits]
                )
                for hits in result.results
            ],
            index_version=result.version,
            index=result.index,
            method=result.method,
        )

    def Access(self, request: search_pb2.AccessRequest, context: grpc.ServicerContext):
        try:
            index, passages = self.engine.access(list(request.ids), request.index, transport="grpc")
        except SearchError as exc:
            context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
        except Exception:
            log.exception("Access failed")
            context.abort(grpc.StatusCode.INTERNAL, "access failed; see the service log")
        context.set_trailing_metadata(self._worker)
        return search_pb2.AccessResponse(
            passages=[passage_pb(index, p) for p in passages], index_version=index.version
        )


def registration(engine: SearchEngine):
    """The `agentrl.common.grpc_server.serve` callback that adds this servicer."""
    return lambda server: search_pb2_grpc.add_SearchServiceServicer_to_server(
        SearchServicer(engine), server
    )
