"""The tools an episode can call, behind one async interface: `ToolRunner.run(call) -> ToolOutcome`.

`SandboxTool` runs `python` calls in the sandbox service (SandboxClient, gRPC). `SearchTool`
runs `search` calls through the search service's `Retrieve` (gRPC) and shows the top-k passages
as Search-R1 writes them (`format_passages`). Blocking calls run in a thread so episodes keep
going. `ToolBox` dispatches a parsed call to the tool of its name and turns every failure into
an observation the model sees: a parse error, an unknown tool, a program that raised, a refused
query, a timeout, an unreachable service. Nothing here raises for a bad call. Truncation to the
observation budget is the agent loop's, the same for every tool.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from agentrl.common.tool_formats import ParsedCall
from agentrl.proto.core.v1 import trajectory_pb2

Status = trajectory_pb2.ToolCallStatus


@dataclass(frozen=True)
class ToolOutcome:
    status: int
    """A `ToolCallStatus` value."""
    output: str
    """What the model is shown (before truncation to the observation budget)."""
    latency_s: float = 0.0


class ToolRunner(Protocol):
    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome: ...


class SandboxTool:
    """`python` calls through the sandbox service; stdout, then stderr, is the observation."""

    def __init__(self, sandbox, timeout_s: float = 10.0) -> None:
        self.sandbox = sandbox  # an agentrl.sandbox.client.SandboxClient
        self.timeout_s = timeout_s

    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
        from agentrl.sandbox.interface import Status as SandboxStatus

        try:
            result = await asyncio.to_thread(
                self.sandbox.execute, call.arguments, timeout_s=self.timeout_s
            )
        except grpc.RpcError as exc:
            return ToolOutcome(
                Status.TOOL_CALL_STATUS_UNAVAILABLE, f"sandbox unavailable: {exc.code().name}"
            )
        output = (
            result.stdout.decode(errors="replace")
            if isinstance(result.stdout, bytes)
            else result.stdout
        )
        stderr = (
            result.stderr.decode(errors="replace")
            if isinstance(result.stderr, bytes)
            else result.stderr
        )
        if result.status == SandboxStatus.OK:
            return ToolOutcome(Status.TOOL_CALL_STATUS_OK, output + stderr)
        if result.status == SandboxStatus.TIMEOUT:
            return ToolOutcome(
                Status.TOOL_CALL_STATUS_TIMEOUT,
                output + f"TimeoutError: the program ran past {self.timeout_s:g} s",
            )
        if result.status in (SandboxStatus.SANDBOX_ERROR, SandboxStatus.REJECTED):
            return ToolOutcome(
                Status.TOOL_CALL_STATUS_UNAVAILABLE,
                f"sandbox error: {result.message or result.status.value}",
            )
        detail = stderr or result.message or f"exited with {result.status.value}"
        return ToolOutcome(Status.TOOL_CALL_STATUS_ERROR, output + detail)


def format_passages(passages) -> str:
    """Search-R1's observation text: `Doc i(Title: t) text`, one line per passage."""
    if not passages:
        return "No passages found."
    return "\n".join(f"Doc {i}(Title: {p.title}) {p.text}" for i, p in enumerate(passages, 1))


def search_query(arguments: str) -> str:
    """The query of a call: the tag's text (`search_tags`), or `{"query": ...}` (Hermes)."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments.strip()
    if isinstance(parsed, dict) and isinstance(parsed.get("query"), str):
        return parsed["query"].strip()
    return arguments.strip()


class SearchTool:
    """`search` calls through the search service; the top-k passages are the observation."""

    def __init__(
        self, channel: grpc.Channel, timeout_s: float = 10.0, top_k: int | None = None
    ) -> None:
        """`channel`: from agentrl.common.grpc_client.create_channel (auth, retries on
        UNAVAILABLE within `timeout_s`)."""
        from agentrl.proto.search.v1 import search_pb2_grpc

        self.stub = search_pb2_grpc.SearchServiceStub(channel)
        self.timeout_s = timeout_s
        self.top_k = top_k  # None: the service's `search.default_top_k`

    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
        from agentrl.proto.search.v1 import search_pb2

        query = search_query(call.arguments)
        if not query:
            return ToolOutcome(Status.TOOL_CALL_STATUS_ERROR, "Error: the search query is empty")
        request = search_pb2.RetrieveRequest(queries=[query], top_k=self.top_k)
        try:
            response = await asyncio.to_thread(self.stub.Retrieve, request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return ToolOutcome(
                    Status.TOOL_CALL_STATUS_TIMEOUT,
                    f"TimeoutError: the search ran past {self.timeout_s:g} s",
                )
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                return ToolOutcome(Status.TOOL_CALL_STATUS_ERROR, f"Error: {exc.details()}")
            return ToolOutcome(
                Status.TOOL_CALL_STATUS_UNAVAILABLE, f"search unavailable: {code.name}"
            )
        return ToolOutcome(
            Status.TOOL_CALL_STATUS_OK, format_passages(response.results[0].passages)
        )


class ToolBox:
    """Dispatch parsed calls by tool name; failures become observations, never exceptions."""

    def __init__(self, tools: dict[str, ToolRunner]) -> None:
        self.tools = tools

    @classmethod
    def for_agents(cls, sandbox: Any, search_channel: grpc.Channel, timeout_s: float) -> ToolBox:
        """Every tool an agent task may name (`python`, `search`): the one set the rollout worker
        and the evaluation both use, so a model is evaluated with the tools it trained with."""
        return cls(
            {
                "python": SandboxTool(sandbox, timeout_s),
                "search": SearchTool(search_channel, timeout_s),
            }
        )

    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
        started = time.monotonic()
        if call.error:
            outcome = ToolOutcome(
                Status.TOOL_CALL_STATUS_PARSE_ERROR,
                f"Error: could not parse the tool call: {call.error}",
            )
        elif call.tool not in self.tools:
            outcome = ToolOutcome(
                Status.TOOL_CALL_STATUS_ERROR,
                f"Error: unknown tool {call.tool!r}; available: "
                f"{', '.join(sorted(self.tools)) or 'none'}",
            )
        else:
            outcome = await self.tools[call.tool].run(call, session_id)
        return ToolOutcome(outcome.status, outcome.output, time.monotonic() - started)
