"""An engine that answers at once: vLLM's `POST /inference/v1/generate` and `GET /health`, no model.

    python benchmarks/instant_engine.py [--port 0]     # prints "listening on http://127.0.0.1:PORT"

What it answers: `sampling_params.max_tokens` token ids (fixed pseudo-random ids), finish
reason `length`, one weight-version span, and with `sampling_params.logprobs = k` one log-prob
entry per token shaped as vLLM's token-in/token-out route shapes it (the sampled token first,
then the other candidates in rank order, `max(k, 1)` entries in all). Replies are built once per
(max_tokens, logprobs) and cached, and the HTTP/1.1 keep-alive server is a bare asyncio
protocol, so nearly all CPU a benchmark sees is its client's: the benchmarks use it to measure
the client path (`InferencePool`, the agent loop) without an engine's noise. Not a fake for
tests: it checks nothing and samples nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import ClassVar

GENERATE_ROUTE = b"/inference/v1/generate"
NUM_CANDIDATE_IDS = 64  # distinct token ids the replies cycle through


def reply_body(max_tokens: int, logprobs: int | None) -> bytes:
    rng = random.Random(max_tokens * 1000 + (logprobs if logprobs is not None else -1))
    ids = [rng.randrange(150_000) for _ in range(NUM_CANDIDATE_IDS)]
    token_ids = [ids[i % NUM_CANDIDATE_IDS] for i in range(max_tokens)]
    content = None
    if logprobs is not None:
        content = []
        for i, token in enumerate(token_ids):
            rank = 1 + i % 3  # the sampled token is the best, second or third candidate
            values = sorted(-rng.expovariate(1.0) for _ in range(max(logprobs, 1) + 3))[::-1]
            others = [ids[(i + j + 1) % NUM_CANDIDATE_IDS] for j in range(len(values))]
            ranked = [(t, v, r + 1) for r, (t, v) in enumerate(zip(others, values, strict=True))]
            sampled = (token, ranked[rank - 1][1], rank)
            rest = [c for c in ranked if c[2] != rank]
            candidates = [sampled, *rest][: max(logprobs, 1)]
            content.append(
                {
                    "token_id": token,
                    "logprob": sampled[1],
                    "rank": rank,
                    "top_logprobs": [
                        {"token_id": t, "logprob": v, "rank": r} for t, v, r in candidates
                    ],
                }
            )
    choice = {
        "index": 0,
        "logprobs": None if content is None else {"content": content},
        "finish_reason": "length",
        "stop_reason": None,
        "token_ids": token_ids,
        "weight_versions": [{"start": 0, "end": max_tokens, "version": "default"}],
    }
    body = {
        "request_id": "instant",
        "output_mode": "tokens",
        "choices": [choice],
        "usage": {"prompt_tokens": 0, "completion_tokens": max_tokens},
    }
    return json.dumps(body).encode()


class EngineProtocol(asyncio.Protocol):
    cache: ClassVar[dict[tuple[int, int | None], bytes]] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            self.respond(head.split(" ", 2)[1].encode(), body)

    def respond(self, path: bytes, body: bytes) -> None:
        if path == GENERATE_ROUTE:
            sampling = json.loads(body).get("sampling_params") or {}
            key = (int(sampling.get("max_tokens") or 16), sampling.get("logprobs"))
            payload = self.cache.get(key)
            if payload is None:
                payload = self.cache[key] = reply_body(*key)
        else:
            payload = b"{}"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        EngineProtocol, "127.0.0.1", port, backlog=4096
    )
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
