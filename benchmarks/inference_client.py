"""Client CPU per generate request against an engine that answers at once (instant_engine.py).

    .venv/bin/python benchmarks/inference_client.py [--rounds 3] [--scenarios c32 c256 top5]

The engine runs in its own process and answers from a cache, so the CPU time of this process
per request is the client's cost alone: building and sending the body, the HTTP client's
bookkeeping, reading and parsing the reply. Each scenario runs every path in paired rounds in
rotating order (benchmarks/paired.py) and prints, per path, its CPU per request divided by
the baseline's in the same round (min / median / max; lower is better):

- c32: concurrency 32, 64 tokens, `logprobs: 0` (the sampled token's log-prob, as training
  needs); baseline a bare httpx client (one AsyncClient, post, `response.json()`, token ids
  and log-probs taken out).
- c256: the same at concurrency 256; baseline the bare httpx client at concurrency 32 in the
  same round, so a ratio above 1 is cost growing with the number in flight.
- top5: concurrency 32, 1,024 tokens with top-5 log-probs; baseline bare httpx.

Paths: `bare httpx`, `bare aiohttp` (one ClientSession), `InferencePool` (its generate, as the
agent loop calls it: routing, body, transport, `parse_generation`). Equal work on the wire:
the pool asks vLLM for k + 1 log-probs to recover the true top-k (pool.py), so the bare paths
send that same `logprobs` and receive the same replies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
from paired import paired_rounds, ratio_line

from agentrl.common.inference.pool import GENERATE_ROUTE, InferencePool

SCENARIOS = {  # name: (concurrency, max_tokens, logprobs, requests per path and round)
    "c32": (32, 64, 0, 1600),
    "c256": (256, 64, 0, 1600),
    "top5": (32, 1024, 5, 160),
}
REFERENCE_CONCURRENCY = 32  # c256 is compared with the bare client at this concurrency
PROMPT = list(range(100, 164))  # 64 prompt tokens


def start_engine() -> tuple[subprocess.Popen, str]:
    engine = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("instant_engine.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = engine.stdout.readline()
    match = re.search(r"http://\S+", line)
    if match is None:
        engine.kill()
        raise RuntimeError(f"instant engine did not start: {line!r}")
    return engine, match.group(0)


def body_for(index: int, sampling: dict) -> dict:
    return {
        "request_id": f"bench-{index}",
        "token_ids": PROMPT,
        "sampling_params": sampling,
        "output_mode": "tokens",
    }


def take(reply: dict) -> int:
    """What any client must take out of a reply: token ids and their log-probs."""
    (choice,) = reply["choices"]
    content = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [c["logprob"] for c in content]
    assert not content or len(logprobs) == len(choice["token_ids"])
    return len(choice["token_ids"])


async def bounded(concurrency: int, count: int, one) -> None:
    next_index = iter(range(count))

    async def lane() -> None:
        for index in next_index:
            await one(index)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def bare_httpx(url: str, concurrency: int, count: int, sampling: dict) -> None:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as http:

        async def one(index: int) -> None:
            response = await http.post(url + GENERATE_ROUTE, json=body_for(index, sampling))
            take(response.json())

        await bounded(concurrency, count, one)


async def bare_aiohttp(url: str, concurrency: int, count: int, sampling: dict) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(index: int) -> None:
            async with http.post(url + GENERATE_ROUTE, json=body_for(index, sampling)) as reply:
                take(json.loads(await reply.read()))

        await bounded(concurrency, count, one)


async def pool_path(url: str, concurrency: int, count: int, sampling: dict) -> None:
    pool = InferencePool([url], request_timeout_s=60)
    try:

        async def one(index: int) -> None:
            out = await pool.generate(f"bench-{index}", PROMPT, sampling)
            pool.release(f"bench-{index}")
            assert len(out.logprobs) == len(out.token_ids)

        await bounded(concurrency, count, one)
    finally:
        await pool.close()


PATHS = {"bare httpx": bare_httpx, "bare aiohttp": bare_aiohttp, "InferencePool": pool_path}


def cpu_per_request(path, url: str, concurrency: int, count: int, sampling: dict) -> float:
    cpu = time.process_time()
    asyncio.run(path(url, concurrency, count, sampling))
    return (time.process_time() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--paths", nargs="*", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies requests per round")
    args = parser.parse_args()

    engine, url = start_engine()
    try:
        for name in args.scenarios:
            concurrency, max_tokens, logprobs, count = SCENARIOS[name]
            count = max(concurrency, int(count * args.scale))
            sampling = {"max_tokens": max_tokens, "temperature": 1.0, "logprobs": logprobs}
            wire = {**sampling, "logprobs": logprobs + 1} if logprobs else sampling
            cpu_per_request(bare_httpx, url, 8, 64, sampling)  # warm: imports, reply cache

            def run(path, c: int = concurrency, n: int = count, sp: dict = sampling, w=wire):
                # The pool gets the caller's sampling, a bare client what the pool sends.
                return lambda r: cpu_per_request(path, url, c, n, sp if path is pool_path else w)

            paths = {p: run(PATHS[p]) for p in args.paths}
            baseline = "bare httpx"
            if concurrency != REFERENCE_CONCURRENCY:
                baseline = f"bare httpx c={REFERENCE_CONCURRENCY}"
                paths[baseline] = run(bare_httpx, REFERENCE_CONCURRENCY)
            print(
                f"\n{name}: concurrency {concurrency}, {max_tokens} tokens, logprobs {logprobs}, "
                f"{count} requests per path and round; client CPU per request (ms):",
                flush=True,
            )
            values = paired_rounds(
                args.rounds,
                paths,
                lambda r, p, v: print(f"  round {r} {p:<18} {v * 1e3:.3f}", flush=True),
            )
            for p in args.paths:
                if p != baseline:
                    print(
                        ratio_line(
                            f"{name} CPU/request {p} / {baseline}", values[p], values[baseline]
                        )
                    )
    finally:
        engine.kill()
        engine.wait()


if __name__ == "__main__":
    main()
