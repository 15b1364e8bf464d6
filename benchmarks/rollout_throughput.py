"""Rollout throughput against one real `vllm serve` (CPU here) with a tiny local model.

(a) Generated tokens/s of the rollout path (AgentLoop, no tools, through InferencePool) against
    raw vLLM: the same prompts, the same sampling body (the exact fields the agent loop sends),
    direct HTTP to the same server's `/inference/v1/generate`, the same concurrency, in the same
    run. `InferencePool.generate` alone is measured too (it splits a gap between the client
    and the loop). The paths alternate order for `--rounds` rounds; figures are the totals,
    with each round and the client's CPU time printed (2-core machines under load are noisy).
(b) Episodes/s with one code tool call per episode at concurrency 8, 32 and 128: every turn is
    forced by a structured-outputs regex to write `print(6 * 7)` in `<code>` (as the integration
    tests force it); with max_tool_calls=1 the first turn runs in the sandbox (bubblewrap, in
    this process over gRPC), the second turn's call ends the episode (2 turns, 1 tool call).

    .venv/bin/python benchmarks/rollout_throughput.py [--prompts 128] [--concurrency 32]

Starts its own model (in a temporary directory) and server; takes 2-4 minutes on 2 CPU cores,
most of it the engine start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx

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


async def raw_tokens(url: str, prompt_list, sampling: dict, concurrency: int) -> tuple[int, float]:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=None)) as http:

        def job_for(i: int, prompt: list[int]):
            async def job():
                body = {
                    "request_id": f"raw-{time.monotonic_ns()}-{i}",
                    "token_ids": prompt,
                    "sampling_params": sampling,
                    "output_mode": "tokens",
                }
                response = await http.post(url + GENERATE_ROUTE, json=body)
                response.raise_for_status()
                return len(response.json()["choices"][0]["token_ids"])

            return job

        started = time.perf_counter()
        counts = await bounded(concurrency, [job_for(i, p) for i, p in enumerate(prompt_list)])
        return sum(counts), time.perf_counter() - started


async def rollout_tokens(
    loop: AgentLoop, prompt_list, settings: EpisodeSettings, concurrency: int, tag: str
) -> tuple[int, float]:
    def job_for(i: int, prompt: list[int]):
        async def job():
            traj = await loop.run(prompt, settings, trajectory_id=f"{tag}-{i}")
            if traj.finish_reason == trajectory_pb2.FINISH_REASON_ERROR:
                raise RuntimeError(traj.error)
            return sum(traj.loss_mask)

        return job

    started = time.perf_counter()
    counts = await bounded(concurrency, [job_for(i, p) for i, p in enumerate(prompt_list)])
    return sum(counts), time.perf_counter() - started


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
    loop = AgentLoop(pool, tokenizer, ToolBox({"python": SandboxTool(sandbox, 10.0)}))
    try:
        # (a) no tools: one turn per episode (a stray </code> must not start a second turn).
        plain = EpisodeSettings(
            sampling={"temperature": 1.0, "top_p": 1.0, "logprobs": 0, "ignore_eos": True},
            max_tokens_per_turn=args.max_tokens,
            max_turns=1,
            max_total_tokens=4096,
        )
        sampling = turn_sampling(plain)
        prompt_list = prompts(tokenizer, args.prompts)
        await raw_tokens(url, prompt_list[: args.concurrency], sampling, args.concurrency)  # warm
        totals = {"raw": [0, 0.0], "pool": [0, 0.0], "rollout": [0, 0.0]}
        orders = [("raw", "pool", "rollout"), ("rollout", "pool", "raw")]
        for r in range(args.rounds):
            # Alternate the order, so drift in machine load hits every path alike.
            for path in orders[r % 2]:
                cpu = time.process_time()
                if path == "raw":
                    tokens, seconds = await raw_tokens(url, prompt_list, sampling, args.concurrency)
                elif path == "pool":
                    tokens, seconds = await pool_tokens(
                        pool, prompt_list, sampling, args.concurrency, f"pool{r}"
                    )
                else:
                    tokens, seconds = await rollout_tokens(
                        loop, prompt_list, plain, args.concurrency, f"plain{r}"
                    )
                totals[path][0] += tokens
                totals[path][1] += seconds
                print(
                    f"  round {r} {path}: {tokens} tokens in {seconds:.2f} s "
                    f"({tokens / seconds:,.0f}/s), client CPU {time.process_time() - cpu:.2f} s",
                    flush=True,
                )
        rates = {path: tokens / seconds for path, (tokens, seconds) in totals.items()}
        print(
            f"\n(a) no tools: {args.prompts} prompts x {args.rounds} rounds, "
            f"max_tokens {args.max_tokens}, concurrency {args.concurrency}"
        )
        print("| path | generated tokens | seconds | tokens/s |")
        print("|---|---|---|---|")
        names = {
            "raw": "raw vLLM HTTP",
            "pool": "InferencePool.generate only",
            "rollout": "rollout (AgentLoop + InferencePool)",
        }
        for path, (tokens, seconds) in totals.items():
            print(f"| {names[path]} | {tokens} | {seconds:.2f} | {rates[path]:,.0f} |")
        print(
            f"ratio rollout/raw: {rates['rollout'] / rates['raw']:.3f} (goal >= 0.9); "
            f"pool/raw: {rates['pool'] / rates['raw']:.3f}",
            flush=True,
        )

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tool-concurrency", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--min-episodes", type=int, default=32)
    parser.add_argument("--sandbox-concurrency", type=int, default=4)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from agentrl.common.grpc_server import serve
    from agentrl.sandbox import executor as sandbox_executor
    from agentrl.sandbox import servicer as sandbox_service
    from agentrl.sandbox.client import SandboxClient

    work = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    started = time.perf_counter()
    try:
        model_dir = init_tiny_model(work / "model", default_corpus(500), seed=1)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = InferenceServerConfig(max_model_len=1024, kv_cache_gib=1, max_num_seqs=128)
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
            with (
                VLLMServer.launch(config, model_dir, work / "vllm.log") as server,
                SandboxClient(grpc_server.address, token=None) as sandbox,
            ):
                print(
                    f"tiny model, 1 vLLM server (engine start {server.start_time_s:.0f} s), "
                    f"{os.cpu_count()} CPUs, sandbox concurrency {args.sandbox_concurrency}",
                    flush=True,
                )
                asyncio.run(bench(args, server.url, tokenizer, sandbox))
        finally:
            grpc_server.stop(0)
            servicer.close()
            executor.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
