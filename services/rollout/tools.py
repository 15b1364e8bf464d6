"""The tools an episode can call, behind one async interface: `ToolRunner.run(call) -> ToolOutcome`.

`SandboxTool` runs `python` calls in the sandbox service (SandboxClient, gRPC; the blocking call
runs in a thread so episodes keep going). `ToolBox` dispatches a parsed call to the tool of its
name and turns every failure into an observation the model sees: a parse error, an unknown tool,
a program that raised, a timeout, an unreachable service. Nothing here raises for a bad call.

What this does NOT cover: the search tool (its client lands with the search integration).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

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
            result = await asyncio.to_thread(self.sandbox.execute, call.arguments,
                                             timeout_s=self.timeout_s)
        except grpc.RpcError as exc:
            return ToolOutcome(Status.TOOL_CALL_STATUS_UNAVAILABLE,
                               f"sandbox unavailable: {exc.code().name}")
        output = result.stdout.decode(errors="replace") if isinstance(result.stdout, bytes) \
            else result.stdout
        stderr = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) \
            else result.stderr
        if result.status == SandboxStatus.OK:
            return ToolOutcome(Status.TOOL_CALL_STATUS_OK, output + stderr)
        if result.status == SandboxStatus.TIMEOUT:
            return ToolOutcome(Status.TOOL_CALL_STATUS_TIMEOUT,
                               output + f"TimeoutError: the program ran past {self.timeout_s:g} s")
        if result.status in (SandboxStatus.SANDBOX_ERROR, SandboxStatus.REJECTED):
            return ToolOutcome(Status.TOOL_CALL_STATUS_UNAVAILABLE,
                               f"sandbox error: {result.message or result.status.value}")
        detail = stderr or result.message or f"exited with {result.status.value}"
        return ToolOutcome(Status.TOOL_CALL_STATUS_ERROR, output + detail)


class ToolBox:
    """Dispatch parsed calls by tool name; failures become observations, never exceptions."""

    def __init__(self, tools: dict[str, ToolRunner]) -> None:
        self.tools = tools

    async def run(self, call: ParsedCall, session_id: str) -> ToolOutcome:
        started = time.monotonic()
        if call.error:
            outcome = ToolOutcome(Status.TOOL_CALL_STATUS_PARSE_ERROR,
                                  f"Error: could not parse the tool call: {call.error}")
        elif call.tool not in self.tools:
            outcome = ToolOutcome(Status.TOOL_CALL_STATUS_ERROR,
                                  f"Error: unknown tool {call.tool!r}; available: "
                                  f"{', '.join(sorted(self.tools)) or 'none'}")
        else:
            outcome = await self.tools[call.tool].run(call, session_id)
        return ToolOutcome(outcome.status, outcome.output, time.monotonic() - started)
