"""The HTTP client of the generate route: one aiohttp session per event loop, flat in concurrency.

    client = GenerateClient()                  # or GenerateClient(httpx_client) for a test's mock
    reply = await client.post(url, body, timeout_s)    # GenerateReply: status_code, content
    reply.json(), reply.text
    await client.close()

Why aiohttp and not httpx for this one route: measured against an engine that answers at once
(benchmarks/inference_client.py, docs/performance.md), httpx spent ~10x aiohttp's client CPU per
request at 32 in flight and ~4x more again at 256 (httpcore's pool walks every waiting request
on every event), while aiohttp's cost per request stays flat. Generation is the only route
that runs thousands of requests at once; control calls and health probes stay on the pool's
httpx client (`InferencePool.http`, used by control.py).

Errors: a connection failure, a reset or a timeout raises `httpx.TransportError` subclasses
(`ConnectError`, `ReadError`, `ReadTimeout`), so the pool's eject-and-retry code handles one
family whichever client carried the request. A kept-alive connection the server closed while
idle is retried once on a fresh connection before that (it says nothing about the server).

Not covered: HTTP/2, streaming replies (the route answers once, at the end).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import httpx

# vLLM's uvicorn closes idle keep-alive connections after 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE);
# dropping ours after 2 s means we never send on a connection the server is closing.
KEEPALIVE_S = 2.0


class GenerateReply:
    """The status and body of one answer (the part of httpx.Response the pool reads)."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class GenerateClient:
    """POSTs JSON bodies to the generate route. With `httpx_client` (a test's MockTransport)
    every request goes through it instead of aiohttp."""

    def __init__(self, httpx_client: httpx.AsyncClient | None = None) -> None:
        self._httpx = httpx_client
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _session_for_loop(self) -> aiohttp.ClientSession:
        # A session belongs to the loop it was made in; a pool used from a second asyncio.run()
        # (tests, CLI commands) gets a new one.
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is not loop:
            await self._drop_session()
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
            )
            self._session = aiohttp.ClientSession(connector=connector)
            self._loop = loop
        return self._session

    async def post(self, url: str, body: dict[str, Any], timeout_s: float) -> GenerateReply:
        if self._httpx is not None:
            response = await self._httpx.post(url, json=body, timeout=timeout_s)
            return GenerateReply(response.status_code, response.content)
        session = await self._session_for_loop()
        data = json.dumps(body).encode()
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        headers = {"content-type": "application/json"}
        for fresh_try in (False, True):
            try:
                async with session.post(url, data=data, headers=headers, timeout=timeout) as reply:
                    return GenerateReply(reply.status, await reply.read())
            except aiohttp.ServerDisconnectedError as exc:
                if not fresh_try:
                    continue  # a closed keep-alive connection: once more on a new one
                raise httpx.ReadError(f"{url}: server disconnected ({exc})") from exc
            except TimeoutError as exc:
                raise httpx.ReadTimeout(f"{url}: no answer within {timeout_s:g} s") from exc
            except aiohttp.ClientConnectorError as exc:
                raise httpx.ConnectError(f"{url}: {exc}") from exc
            except aiohttp.ClientError as exc:
                raise httpx.ReadError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _drop_session(self) -> None:
        """Forget a session made in another event loop: detached (aiohttp does not report it
        unclosed), its connector closed when that loop is gone (closing then touches no loop;
        a loop still running in another thread keeps its connections until its end)."""
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        connector = session.connector
        session.detach()
        if connector is not None and self._loop is not None and self._loop.is_closed():
            await connector.close()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            try:
                await self._session.close()
            except RuntimeError:  # made in a loop that is gone: nothing left to close there
                pass
        self._session = None
