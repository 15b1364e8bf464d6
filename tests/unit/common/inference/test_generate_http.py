"""GenerateClient against a real local HTTP server: replies, errors the pool ejects on, loops."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agentrl.common.inference.generate_http import GenerateClient


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status = 503 if body.get("fail") else 200
        payload = json.dumps({"echo": body}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_replies_and_status_codes_come_back_and_a_second_event_loop_gets_its_own_session(
    server_url,
):
    client = GenerateClient()

    async def post(body: dict):
        return await client.post(server_url + "/inference/v1/generate", body, 10.0)

    ok = asyncio.run(post({"token_ids": [1, 2]}))
    assert (ok.status_code, ok.json()) == (200, {"echo": {"token_ids": [1, 2]}})
    failed = asyncio.run(post({"fail": True}))  # a new loop: the first session is dropped
    assert failed.status_code == 503 and "fail" in failed.text
    asyncio.run(client.close())


def test_a_refused_connection_is_an_httpx_transport_error_so_the_pool_ejects_the_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    client = GenerateClient()

    async def post():
        try:
            await client.post(f"http://127.0.0.1:{port}/inference/v1/generate", {}, 5.0)
        finally:
            await client.close()

    with pytest.raises(httpx.ConnectError, match=str(port)):
        asyncio.run(post())
