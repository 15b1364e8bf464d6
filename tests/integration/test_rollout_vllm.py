"""The vLLM pool against real `vllm serve` processes on CPU with a tiny local model: token-in/
token-out generation, log-probs that match vLLM's own scoring, pause/resume with weight versions,
sticky and least-loaded routing, and failover when a server is killed.

Two servers start together for the module (~3 GiB of memory each, ~70-100 s to start on 2
shared cores); one of them is killed by the failover test, which therefore runs last."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrl.common.config import InferenceServerConfig
from agentrl.common.inference import control
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.proto.core.v1 import trajectory_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LOGPROB_TOLERANCE = 1e-4
CONFIG = InferenceServerConfig(max_model_len=1024, kv_cache_gib=1, max_num_seqs=64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(500), seed=1)


@pytest.fixture(scope="module")
def servers(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[VLLMServer]]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    started = [VLLMServer.spawn(CONFIG, model_dir, logs / f"vllm-{i}.log") for i in range(2)]
    try:
        for server in started:
            server.wait_ready(CONFIG.start_timeout_s)
            print(f"engine start {server.start_time_s:.1f} s ({server.url})")
        yield started
    finally:
        for server in started:
            server.stop()


def run(coro):
    return asyncio.run(coro)


async def with_pool(urls: list[str], body):
    pool = InferencePool(urls, request_timeout_s=120, max_retries=2)
    try:
        return await body(pool)
    finally:
        await pool.close()


def test_generate_is_token_in_token_out_and_logprobs_match_scoring(servers) -> None:
    prompt = [1, 40, 41, 42, 43]

    async def body(pool: InferencePool):
        out = await pool.generate(
            "t-logprobs",
            prompt,
            {"max_tokens": 24, "temperature": 1.0, "logprobs": 5, "seed": 7, "ignore_eos": True},
        )
        scored = await pool.score(prompt + out.token_ids)
        return out, scored

    out, scored = run(with_pool([servers[0].url], body))
    assert len(out.token_ids) == 24 and out.finish_reason == "length"
    assert len(out.logprobs) == len(out.top_logprobs) == len(out.policy_versions) == 24
    assert all(len(top) == 5 for top in out.top_logprobs)
    for token, logprob, top in zip(out.token_ids, out.logprobs, out.top_logprobs):
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        # The sampled token is in the top-k exactly when its log-prob reaches the k-th best.
        assert logprob <= top[0][1] + LOGPROB_TOLERANCE
        assert (token in dict(top)) == (logprob >= top[-1][1])
        assert dict(top).get(token, logprob) == pytest.approx(logprob, abs=LOGPROB_TOLERANCE)
    assert scored[0] is None
    for sampled, rescored in zip(out.logprobs, scored[len(prompt) :], strict=True):
        assert abs(sampled - rescored) < LOGPROB_TOLERANCE


def test_stop_string_ends_the_turn_on_the_tag(servers, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    close_code = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids("</code>")

    async def body(pool: InferencePool):
        # Only "x" and "</code>" may be sampled: the turn must end at the first "</code>".
        return await pool.generate(
            "t-stop",
            [1, 40],
            {
                "max_tokens": 200,
                "stop": ["</code>"],
                "include_stop_str_in_output": True,
                "allowed_token_ids": [87, close_code],
                "seed": 3,
            },
        )

    out = run(with_pool([servers[0].url], body))
    assert out.finish_reason == "stop" and out.stop_reason == "</code>"
    assert out.token_ids[-1] == close_code and close_code not in out.token_ids[:-1]


def test_pause_keeps_requests_and_tokens_carry_the_new_version(servers) -> None:
    async def body(pool: InferencePool):
        assert set((await control.weight_versions(pool)).values()) == {0}
        await control.pause(pool, "keep")
        pending = asyncio.create_task(
            pool.generate("t-pause", [1, 40], {"max_tokens": 8, "ignore_eos": True})
        )
        await asyncio.sleep(1.0)
        finished_while_paused = pending.done()
        await control.set_weight_version(pool, 7)
        await control.resume(pool)
        out = await pending
        await control.set_weight_version(pool, 0)
        return finished_while_paused, out

    finished_while_paused, out = run(with_pool([servers[0].url], body))
    assert not finished_while_paused
    assert out.policy_versions == [7] * 8


async def generation_tokens_total(pool: InferencePool, url: str) -> float:
    """The server's `vllm:generation_tokens_total` (Prometheus /metrics), summed over labels."""
    text = (await pool.http.get(url + "/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


def test_abort_pause_mid_turn_resumes_from_its_tokens_with_the_new_version(
    servers, model_dir: Path
) -> None:
    """Issue item 6: pause(abort) while a turn is generating, set a new version, resume. The
    turn continues from the tokens it had: one aborted request, then one request whose prompt is
    the prompt plus exactly those tokens, and versions switch 0 -> 5 at that boundary."""
    from transformers import AutoTokenizer

    from agentrl.common.agent.loop import AgentLoop, EpisodeSettings
    from agentrl.common.agent.tools import ToolBox

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt, turn_tokens, new_version = [1, 40, 41, 42, 43], 900, 5
    # Plain tokens only (a sampler restriction applied after raw log-probs): no stop string or
    # EOS can end the turn early, so it runs for exactly turn_tokens tokens.
    allowed = [tokenizer.convert_tokens_to_ids(t) for t in ("x", "y", "Ġ")]
    settings = EpisodeSettings(
        sampling={"temperature": 1.0, "seed": 13, "ignore_eos": True, "allowed_token_ids": allowed},
        max_tokens_per_turn=turn_tokens,
        max_turns=1,
    )
    url = servers[0].url

    async def attempt(pool: InferencePool, calls: list, trajectory_id: str):
        generate = pool.generate

        async def spy(session_id, prompt_token_ids, sampling):
            out = await generate(session_id, prompt_token_ids, sampling)
            calls.append((list(prompt_token_ids), out))
            return out

        pool.generate = spy
        loop = AgentLoop(pool, tokenizer, ToolBox({}))
        before = await generation_tokens_total(pool, url)
        episode = asyncio.create_task(loop.run(prompt, settings, trajectory_id=trajectory_id))
        # Mid-turn: the server has sampled some of this (only) request's tokens, not all.
        deadline = asyncio.get_running_loop().time() + 60
        while await generation_tokens_total(pool, url) - before < 32:
            assert not episode.done() and asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        try:
            await control.pause(pool, "abort")
            await asyncio.sleep(0.5)
            aborted_while_paused = len(calls)
            await control.set_weight_version(pool, new_version)
            await control.resume(pool)
            traj = await asyncio.wait_for(episode, 120)
        finally:
            pool.generate = generate
            await control.resume(pool)
            await control.set_weight_version(pool, 0)
        return aborted_while_paused, traj

    async def body(pool: InferencePool):
        # The pause is sent once the server has sampled 32 of the 900 tokens; on a stalled
        # machine the turn can finish before the pause arrives (one call, finish "length"), which
        # tests nothing: such an attempt is repeated (at most 3), never counted as a pass.
        for n in range(3):
            calls: list[tuple[list[int], object]] = []
            aborted_while_paused, traj = await attempt(pool, calls, f"t-abort-{n}")
            if not (len(calls) == 1 and calls[0][1].finish_reason == "length"):
                break
        scored = await pool.score(list(traj.token_ids))
        return aborted_while_paused, calls, traj, scored

    aborted_while_paused, calls, traj, scored = run(with_pool([url], body))
    assert aborted_while_paused == 1, "the pause must have ended the in-flight request"
    (first_prompt, first), (second_prompt, second) = calls
    assert first.finish_reason == "abort" and 0 < len(first.token_ids) < turn_tokens
    assert first.policy_versions == [0] * len(first.token_ids)
    # The resumed request continues from exactly the tokens the aborted one had.
    assert first_prompt == prompt and second_prompt == prompt + first.token_ids
    assert second.finish_reason == "length"
    assert len(first.token_ids) + len(second.token_ids) == turn_tokens
    assert second.policy_versions == [new_version] * len(second.token_ids)

    n = len(traj.token_ids)
    assert traj.finish_reason == trajectory_pb2.FINISH_REASON_MAX_TOKENS
    assert len(traj.turns) == 1 and traj.turns[0].response_end == n == len(prompt) + turn_tokens
    assert list(traj.token_ids) == prompt + first.token_ids + second.token_ids
    assert len(traj.loss_mask) == len(traj.behaviour_logprobs) == len(traj.policy_versions) == n
    assert list(traj.loss_mask) == [0] * len(prompt) + [1] * turn_tokens
    assert traj.response_text == tokenizer.decode(first.token_ids + second.token_ids)
    assert tokenizer.decode(list(traj.token_ids)) == tokenizer.decode(prompt) + traj.response_text
    # Versions change once, from 0 to the new one, at the abort point inside the turn.
    boundary = len(prompt) + len(first.token_ids)
    assert list(traj.policy_versions) == (
        [-1] * len(prompt) + [0] * len(first.token_ids) + [new_version] * len(second.token_ids)
    )
    changes = [
        i
        for i in range(len(prompt) + 1, n)
        if traj.policy_versions[i] != traj.policy_versions[i - 1]
    ]
    assert changes == [boundary]
    # Each sampled token was drawn given exactly the tokens before it in the trajectory (a lost
    # or duplicated token would shift the context): its log-prob equals vLLM's scoring.
    for i in range(len(prompt), n):
        assert abs(traj.behaviour_logprobs[i] - scored[i]) < LOGPROB_TOLERANCE, i


def test_sticky_least_loaded_routing_and_failover_to_the_healthy_server(servers) -> None:
    urls = [s.url for s in servers]

    async def body(pool: InferencePool):
        sampling = {"max_tokens": 4, "ignore_eos": True}
        first = await asyncio.gather(
            *(pool.generate(f"s{i}", [1, 40 + i], sampling) for i in range(4))
        )
        spread = {out.server_url for out in first}
        again = [await pool.generate(f"s{i}", [1, 40 + i], sampling) for i in range(4)]
        sticky = all(a.server_url == b.server_url for a, b in zip(first, again))
        servers[1].kill()
        moved = [await pool.generate(f"s{i}", [1, 40 + i], sampling) for i in range(4)]
        fresh = [await pool.generate(f"new{i}", [1, 50 + i], sampling) for i in range(3)]
        health = await pool.check_health()
        return spread, sticky, moved, fresh, health

    spread, sticky, moved, fresh, health = run(with_pool(urls, body))
    assert spread == set(urls), "new sessions must be spread over both servers"
    assert sticky, "a session's later turns must go to its first server"
    assert {out.server_url for out in moved + fresh} == {urls[0]}
    assert all(len(out.token_ids) == 4 for out in moved + fresh)
    assert health == {urls[0]: True, urls[1]: False}
