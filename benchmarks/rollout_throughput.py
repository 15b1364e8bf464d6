"""Rollout throughput against raw generate calls on one engine, equal work, paired rounds.

(a) Generated tokens/s of the rollout path (AgentLoop, no tools, through InferencePool) and of
    `InferencePool.generate` alone, each against raw calls of the same route: the same prompts,
    the same body on the wire (the exact sampling fields the agent loop sends, the same
    `logprobs`: the pool asks k + 1 for a true top-k, so raw sends k + 1 too), the same
    concurrency, one bare aiohttp session (the cheapest client measured, inference_client.py).
    `--rounds` paired rounds in rotating order (benchmarks/paired.py); per round and path:
    tokens/s, the client's CPU seconds, and with `--engine vllm` vLLM's own per-request means
    from its /metrics histograms (queue, prefill, decode, end-to-end) over that path's
    requests, so a difference between paths shows up where it arises: in the engine or in
    the client. Prints ratios rollout/raw, pool/raw and rollout/pool (the agent loop's own
    share) as min / median / max over the rounds.
(b) `--engine vllm` only: episodes/s with one code tool call per episode at each
    `--tool-concurrency`: every turn is forced by a structured-outputs regex to write
    `print(6 * 7)` in `<code>`; with max_tool_calls=1 the first turn runs in the sandbox
    (bubblewrap, in this process over gRPC), the second turn's call ends the episode.

`--engine instant` swaps vLLM for benchmarks/instant_engine.py (answers at once, no model):
the client path alone, without an engine competing for the same cores.

    .venv/bin/python benchmarks/rollout_throughput.py --engine instant --rounds 3
    .venv/bin/python benchmarks/rollout_throughput.py --rounds 3 [--prompts 128] [--concurrency 32]

With vLLM it starts its own tiny model (in a temporary directory) and server: 2-4 minutes on 2
CPU cores, most of it the engine start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from paired import ratio_line, round_order

from agentrl.common.agent.loop import AgentLoop, EpisodeSettings
from agentrl.common.agent.tools import SandboxTool, ToolBox
from agentrl.common.config import AgentRLConfig, InferenceServerConfig
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import GENERATE_ROUTE, InferencePool
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.common.tool_formats import get_format
from agentrl.proto.core.v1 import trajectory_pb2

CALL_REGEX = r"Let me compute\.\n<code>\nprint\(6 \* 7\)\n</code>"
QUESTIONS = [f"What is {a} * {b}?" for a in range(3, 19) for b in range(2, 10)]


def prompts(tokenizer, count: int) -> list[list[int]]:
    out = []
    for question in (QUESTIONS * (count // len(QUESTIONS) + 1))[:count]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        out.append(tokenizer.encode(text, add_special_tokens=False))
    return out


def turn_sampling(settings: EpisodeSettings) -> dict:
    """The SamplingParams fields AgentLoop._generate_turn sends for a first turn."""
    fmt = get_format(settings.tool_format)
    stop = fmt.stop_strings + [
        s for s in settings.sampling.get("stop", []) if s not in fmt.stop_strings
    ]
    return {
        **settings.sampling,
        "stop": stop,
        "max_tokens": settings.max_tokens_per_turn,
        "include_stop_str_in_output": True,
        "n": 1,
        "logprobs": settings.sampling.get("logprobs", 0),
    }


async def bounded(concurrency: int, jobs):
    semaphore = asyncio.Semaphore(concurrency)

    async def one(job):
        async with semaphore:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


def wire_sampling(sampling: dict) -> dict:
    """What InferencePool.generate puts on the wire for `sampling` (k + 1 log-probs for k)."""
    num_top = sampling.get("logprobs") or 0
    return {**sampling, "logprobs": num_top + 1} if num_top else sampling


async def raw_tokens(url: str, prompt_list, sampling: dict, concurrency: int) -> tuple[int, float]:
    """Raw generate calls: one aiohttp session, the body the pool would send, token ids and
    log-probs taken out of each reply."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        def job_for(i: int, prompt: list[int]):
            async def job():
                body = {
                    "request_id": f"raw-{time.monotonic_ns()}-{i}",
                    "token_ids": prompt,
                    "sampling_params": sampling,
                    "output_mode": "tokens",
                }
                async with http.post(url + GENERATE_ROUTE, json=body) as reply:
                    reply.raise_for_status()
                    (choice,) = json.loads(await reply.read())["choices"]
                content = (choice.get("logprobs") or {}).get("content") or []
                assert len([c["logprob"] for c in content]) in (0, len(choice["token_ids"]))
                return len(choice["token_ids"])

            return job

        started = time.perf_counter()
        counts = await bounded(concurrency, [job_for(i, p) for i, p in enumerate(prompt_list)])
        return sum(counts), time.perf_counter() - started


ENGINE_HISTOGRAMS = {  # vLLM's per-request histograms (seconds): name in /metrics -> column
    "vllm:request_queue_time_seconds": "queue",
    "vllm:request_prefill_time_seconds": "prefill",
    "vllm:request_decode_time_seconds": "decode",
    "vllm:e2e_request_latency_seconds": "e2e",
}


async def engine_totals(url: str) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of each of vLLM's per-request histograms now; None without /metrics."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(url + "/metrics")
    if response.status_code != 200 or "vllm:" not in response.text:
        return None  # the instant engine has no metrics
    totals = {}
    for name in ENGINE_HISTOGRAMS:
        sums = re.findall(rf"^{re.escape(name)}_sum{{[^}}]*}} (\S+)$", response.text, re.MULTILINE)
        counts = re.findall(
            rf"^{re.escape(name)}_count{{[^}}]*}} (\S+)$", response.text, re.MULTILINE
        )
        totals[name] = (sum(map(float, sums)), sum(map(float, counts)))
    return totals


def engine_means(before, after) -> str:
    """vLLM's mean per request between two `engine_totals`, e.g. `queue 0.120 s, ...`."""
    if before is None or after is None:
        return ""
    parts = []
    for name, column in ENGINE_HISTOGRAMS.items():
        total = after[name][0] - before[name][0]
        count = after[name][1] - before[name][1]
        parts.append(f"{column} {total / count:.3f}" if count else f"{column} -")
    return "; vLLM per request (s): " + ", ".join(parts)


async def rollout_tokens(
    loop: AgentLoop, prompt_list, settings: EpisodeSettings, concurrency: int, tag: str
) -> tuple[int, float, int]:
    """Generated tokens, seconds, and the calls sampled on the last turn (recorded, not run)."""

    def job_for(i: int, prompt: list[int]):
        async def job():
            traj = await loop.run(prompt, settings, trajectory_id=f"{tag}-{i}")
            if traj.finish_reason == trajectory_pb2.FINISH_REASON_ERROR:
                raise RuntimeError(traj.error)
            if traj.num_tool_calls:  # unequal work: raw and pool run no tool
                raise RuntimeError(f"episode {traj.trajectory_id} ran a tool call")
            unrun = sum(1 for turn in traj.turns if turn.HasField("tool_call"))
            return sum(traj.loss_mask), unrun

        return job

    started = time.perf_counter()
    results = await bounded(concurrency, [job_for(i, p) for i, p in enumerate(prompt_list)])
    elapsed = time.perf_counter() - started
    return sum(t for t, _ in results), elapsed, sum(u for _, u in results)


async def pool_tokens(
    pool: InferencePool, prompt_list, sampling: dict, concurrency: int, tag: str
) -> tuple[int, float]:
    """InferencePool.generate alone (no AgentLoop): splits the gap between the two layers."""

    def job_for(i: int, prompt: list[int]):
        async def job():
            out = await pool.generate(f"{tag}-{i}", prompt, sampling)
            pool.release(f"{tag}-{i}")
            return len(out.token_ids)

        return job

    started = time.perf_counter()
    counts = await bounded(concurrency, [job_for(i, p) for i, p in enumerate(prompt_list)])
    return sum(counts), time.perf_counter() - started


async def tool_episodes(
    loop: AgentLoop, prompt_list, settings: EpisodeSettings, concurrency: int, tag: str
) -> tuple[int, float, int]:
    def job_for(i: int, prompt: list[int]):
        async def job():
            traj = await loop.run(prompt, settings, trajectory_id=f"{tag}-{i}")
            ok = (
                traj.finish_reason == trajectory_pb2.FINISH_REASON_MAX_TOOL_CALLS
                and traj.num_tool_calls == 1
                and traj.turns[0].tool_call.status == trajectory_pb2.TOOL_CALL_STATUS_OK
                and traj.turns[0].tool_call.output == "42\n"
            )
            return ok, sum(traj.loss_mask)

        return job

    started = time.perf_counter()
    results = await bounded(concurrency, [job_for(i, p) for i, p in enumerate(prompt_list)])
    elapsed = time.perf_counter() - started
    bad = sum(1 for ok, _ in results if not ok)
    return len(results), elapsed, bad


async def bench(args, url: str, tokenizer, sandbox) -> None:
    pool = InferencePool([url], request_timeout_s=300)
    tools = ToolBox({"python": SandboxTool(sandbox, 10.0)} if sandbox is not None else {})
    loop = AgentLoop(pool, tokenizer, tools)
    try:
        # (a) no tools: one turn per episode. The tiny model writes `</code>` (the format's
        # stop string) in about a third of its turns; max_turns=1 makes that the last turn's
        # call, which the agent loop records without running it, as raw and pool run none.
        # The tool-call limit is left at its default on purpose: the check in rollout_tokens
        # then fails the benchmark if the loop ever runs a last turn's call again.
        plain = EpisodeSettings(
            sampling={
                "temperature": 1.0,
                "top_p": 1.0,
                "logprobs": args.logprobs,
                "ignore_eos": True,
            },
            max_tokens_per_turn=args.max_tokens,
            max_turns=1,
            max_total_tokens=4096,
        )
        sampling = turn_sampling(plain)  # what the agent loop passes to the pool
        wire = wire_sampling(sampling)  # what the pool sends: raw sends exactly this
        prompt_list = prompts(tokenizer, args.prompts)
        await raw_tokens(url, prompt_list[: args.concurrency], wire, args.concurrency)  # warm
        await pool_tokens(pool, prompt_list[: args.concurrency], sampling, args.concurrency, "w")

        async def measure(path: str, r: int) -> float:
            cpu, unrun = time.process_time(), ""
            before = await engine_totals(url)
            if path == "raw":
                tokens, seconds = await raw_tokens(url, prompt_list, wire, args.concurrency)
            elif path == "pool":
                tokens, seconds = await pool_tokens(
                    pool, prompt_list, sampling, args.concurrency, f"pool{r}"
                )
            else:
                tokens, seconds, calls = await rollout_tokens(
                    loop, prompt_list, plain, args.concurrency, f"plain{r}"
                )
                unrun = f", {calls} last-turn calls recorded, not run"
            cpu_s = time.process_time() - cpu
            cpu_per_token[path].append(cpu_s / tokens)
            means = engine_means(before, await engine_totals(url))
            print(
                f"  round {r} {path:<8} {tokens} tokens in {seconds:.2f} s "
                f"({tokens / seconds:,.0f}/s), client CPU {cpu_s:.2f} s{unrun}{means}",
                flush=True,
            )
            return tokens / seconds

        # Paired rounds as paired.py runs them, on this event loop.
        rates = {name: [] for name in ("raw", "pool", "rollout")}
        cpu_per_token = {name: [] for name in rates}
        for r in range(args.rounds):
            for path in round_order(list(rates), r):
                rates[path].append(await measure(path, r))
        print(
            f"\n(a) no tools, engine {args.engine}: {args.prompts} prompts x {args.rounds} rounds, "
            f"max_tokens {args.max_tokens}, logprobs {args.logprobs}, "
            f"concurrency {args.concurrency}; generated tokens/s"
        )
        print(ratio_line("rollout / raw", rates["rollout"], rates["raw"], ">= 0.95"))
        print(ratio_line("pool / raw", rates["pool"], rates["raw"]))
        print(ratio_line("rollout / pool", rates["rollout"], rates["pool"]))
        print("client CPU per generated token (lower is better):")
        for path, base in (("rollout", "raw"), ("pool", "raw"), ("rollout", "pool")):
            print(ratio_line(f"{path} / {base}", cpu_per_token[path], cpu_per_token[base]))
        sys.stdout.flush()
        if sandbox is None or not args.tool_concurrency:
            return

        # (b) one code tool call per episode.
        forced = EpisodeSettings(
            sampling={
                "temperature": 1.0,
                "logprobs": 0,
                "structured_outputs": {"regex": CALL_REGEX},
            },
            max_tokens_per_turn=64,
            max_tool_calls=1,
        )
        await tool_episodes(loop, prompts(tokenizer, 8), forced, 8, "warm")  # grammar compile
        print("\n(b) one python call per episode (2 turns, 1 sandbox call)")
        print("| concurrency | episodes | seconds | episodes/s | bad episodes |")
        print("|---|---|---|---|---|")
        for concurrency in args.tool_concurrency:
            count = max(args.min_episodes, 2 * concurrency)
            n, seconds, bad = await tool_episodes(
                loop, prompts(tokenizer, count), forced, concurrency, f"tool{concurrency}"
            )
            print(
                f"| {concurrency} | {n} | {seconds:.2f} | {n / seconds:.1f} | {bad} |", flush=True
            )
    finally:
        await pool.close()


def start_instant_engine() -> tuple[subprocess.Popen, str]:
    engine = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("instant_engine.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    match = re.search(r"http://\S+", engine.stdout.readline())
    if match is None:
        engine.kill()
        raise RuntimeError("benchmarks/instant_engine.py did not start")
    return engine, match.group(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["vllm", "instant"], default="vllm")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--logprobs", type=int, default=0, help="top-k log-probs asked (0: none)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tool-concurrency", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--min-episodes", type=int, default=32)
    parser.add_argument("--sandbox-concurrency", type=int, default=4)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    started = time.perf_counter()
    try:
        model_dir = init_tiny_model(work / "model", default_corpus(500), seed=1)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if args.engine == "instant":
            engine, url = start_instant_engine()
            try:
                print(f"instant engine, {os.cpu_count()} CPUs", flush=True)
                asyncio.run(bench(args, url, tokenizer, None))
            finally:
                engine.kill()
                engine.wait()
        else:
            run_with_vllm(args, work, model_dir, tokenizer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def run_with_vllm(args, work: Path, model_dir: Path, tokenizer) -> None:
    config = InferenceServerConfig(max_model_len=1024, kv_cache_gib=1, max_num_seqs=128)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(VLLMServer.launch(config, model_dir, work / "vllm.log"))
        # The sandbox (its gRPC server's threads, its slots) only when (b) runs: (a) must not
        # share this process with it.
        sandbox = stack.enter_context(start_sandbox(args)) if args.tool_concurrency else None
        print(
            f"tiny model, 1 vLLM server (engine start {server.start_time_s:.0f} s), "
            f"{os.cpu_count()} CPUs, sandbox concurrency "
            f"{args.sandbox_concurrency if sandbox is not None else '- (no tool rows)'}",
            flush=True,
        )
        asyncio.run(bench(args, server.url, tokenizer, sandbox))


@contextlib.contextmanager
def start_sandbox(args):
    """A sandbox service in this process (bubblewrap backend) and a client of it."""
    from agentrl.common.grpc_server import serve
    from agentrl.sandbox import executor as sandbox_executor
    from agentrl.sandbox import servicer as sandbox_service
    from agentrl.sandbox.client import SandboxClient

    sandbox_config = AgentRLConfig.model_validate(
        {"sandbox": {"max_concurrency": args.sandbox_concurrency}}
    ).sandbox
    executor = sandbox_executor.Sandbox(sandbox_config)
    servicer = sandbox_service.SandboxServicer(executor)
    grpc_server = serve(
        sandbox_service.register(servicer),
        [sandbox_service.SERVICE_NAME],
        port=0,
        token=None,
        max_workers=max(8, args.sandbox_concurrency),
    )
    try:
        with SandboxClient(grpc_server.address, token=None) as sandbox:
            yield sandbox
    finally:
        grpc_server.stop(0)
        servicer.close()
        executor.close()


if __name__ == "__main__":
    main()
