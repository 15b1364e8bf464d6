"""The tools an episode can call, behind one async interface: `ToolRunner.run(call) -> ToolOutcome`.

`SandboxTool` runs `python` calls (the tag's text, or a Hermes call's `{"code": ...}`) in the
sandbox service (SandboxClient, gRPC), by default in a session (`session_id`: the episode's),
so a variable, import or file of one call exists in the next, as in Open-AgentRL's and ARPO's code interpreters; the agent loop closes the session when
the episode ends (`ToolBox.close_session`). `StickySandbox` spreads calls over several sandbox
replicas (`sandbox.addresses`), every call of one session to the replica holding it (a
session's interpreter lives in one replica's process). `SearchTool`
runs `search` calls through the search service's `Retrieve` (gRPC) and shows the top-k passages
as Search-R1 writes them (`format_passages`). Blocking calls run in a thread so episodes keep
going. `ToolBox` dispatches a parsed call to the tool of its name and turns every failure into
an observation the model sees: a parse error, an unknown tool, a program that raised, a refused
query, a timeout, an unreachable service. Nothing here raises for a bad call. Truncation to the
observation budget is the agent loop's, the same for every tool.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol, Self

import grpc

from agentrl.common.logging import get_logger
from agentrl.common.tool_formats import ParsedCall
from agentrl.proto.core.v1 import trajectory_pb2

log = get_logger(__name__)
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


class StickySandbox:
    """Several sandbox replicas behind SandboxClient's calls: a call with a `session_id` (and
    its `close_session`) always goes to the replica the id hashes to; a call without one goes
    round-robin. The hash is stable across processes (CRC-32), so every rollout worker sends a
    session to the same replica."""

    def __init__(self, clients: list[Any]) -> None:
        if not clients:
            raise ValueError("StickySandbox needs at least one sandbox client")
        self.clients = clients
        self._next = itertools.count()

    def client_for(self, session_id: str) -> Any:
        if session_id:
            return self.clients[zlib.crc32(session_id.encode()) % len(self.clients)]
        return self.clients[next(self._next) % len(self.clients)]

    def execute(self, code: str, **fields: Any):
        return self.client_for(fields.get("session_id", "")).execute(code, **fields)

    def close_session(self, session_id: str) -> bool:
        return self.client_for(session_id).close_session(session_id)

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sandbox_client(sandbox_config: Any, outage: Any = None) -> Any:
    """A SandboxClient for `sandbox.address` (or host:grpc_port), or a StickySandbox over
    `sandbox.addresses` when it lists several replicas."""
    from agentrl.sandbox.client import SandboxClient

    addresses = list(getattr(sandbox_config, "addresses", None) or [sandbox_config.target()])
    clients = [SandboxClient(address, outage=outage) for address in addresses]
    return clients[0] if len(clients) == 1 else StickySandbox(clients)


class SandboxTool:
    """`python` calls through the sandbox service; stdout, then stderr, is the observation.
    With `sessions` (the default) each call runs in the interpreter session of its episode
    (`session_id`), which keeps its state until `close_session`; without, every call starts a
    fresh interpreter."""

    def __init__(self, sandbox, timeout_s: float = 10.0, sessions: bool = True) -> None:
        self.sandbox = sandbox  # an agentrl.sandbox.client.SandboxClient (or StickySandbox)
        self.timeout_s = timeout_s
        self.sessions = sessions

    async def close_session(self, session_id: str) -> None:
        """End the episode's interpreter session (nothing when sessions are off or none ran)."""
        if self.sessions and session_id:
            await asyncio.to_thread(self.sandbox.close_session, session_id)

    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
        from agentrl.sandbox.interface import Status as SandboxStatus

        code = python_code(call.arguments)
        if code is None:
            return ToolOutcome(Status.TOOL_CALL_STATUS_ERROR, PYTHON_ARGUMENTS_ERROR)
        fields: dict[str, Any] = {"timeout_s": self.timeout_s}
        if self.sessions and session_id:
            fields["session_id"] = session_id
        try:
            result = await asyncio.to_thread(self.sandbox.execute, code, **fields)
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


PYTHON_ARGUMENTS_ERROR = 'Error: the python tool takes {"code": "<the program>"}'


def python_code(arguments: str) -> str | None:
    """The program of a call: the tag's text (`code_tags`), or the `code` argument of a Hermes
    call (`{"name": "python", "arguments": {"code": ...}}`, as parse_hermes passes it on).
    None for a JSON object without a string `code`: a Hermes call with wrong arguments (run as
    written it would be a dict literal that prints nothing, a silent no-op for the model)."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
    if not isinstance(parsed, dict):
        return arguments  # a program that happens to be JSON (`42`, `[1, 2]`) runs as written
    code = parsed.get("code")
    return code if isinstance(code, str) else None


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
    def for_agents(
        cls,
        sandbox: Any,
        search_channel: grpc.Channel,
        timeout_s: float,
        python_sessions: bool = True,
    ) -> ToolBox:
        """Every tool an agent task may name (`python`, `search`): the one set the rollout worker
        and the evaluation both use, so a model is evaluated with the tools it trained with."""
        return cls(
            {
                "python": SandboxTool(sandbox, timeout_s, sessions=python_sessions),
                "search": SearchTool(search_channel, timeout_s),
            }
        )

    def stateful(self, tool: str) -> bool:
        """Whether calls of `tool` share state within an episode (a branch must replay them)."""
        return getattr(self.tools.get(tool), "sessions", False)

    async def close_session(self, session_id: str) -> None:
        """End the episode's sessions in every tool that keeps some; a failure (the sandbox
        restarted, unreachable) is logged, never raised: the sandbox reaps idle sessions."""
        for name, tool in self.tools.items():
            close = getattr(tool, "close_session", None)
            if close is None:
                continue
            try:
                await close(session_id)
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("could not close the %s session %s: %s", name, session_id, exc)

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
