"""The `agentrl_gloo` weight-transfer engine against two real `vllm serve` on CPU (tiny model),
driven through vLLM's four-phase API by `GlooWeightSender`:

    pause(keep) -> init (once) -> start -> update -> finish -> reset prefix cache
    -> update_weight_version -> resume

- After a transfer both servers' greedy tokens and log-probs equal transformers' with the sent
  (perturbed) weights, within 1e-4 in float32.
- A bad checksum and a stalled trainer fail /update_weights with the cause, within the timeout,
  and leave the served weights alone; the next transfer re-initialises the group and works.
- A server killed between start_weight_update and update_weights fails the update with its URL
  and the phase; the survivor discards its staged copy and keeps serving its previous weights.
  (Last in the module: it kills one of the module's two servers.)

Two servers for the module, started together (~3 GiB each, 40-90 s on 2 shared cores).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from agentrl.common.config import InferenceServerConfig
from agentrl.common.inference import control
from agentrl.common.inference.control import ControlError
from agentrl.common.inference.gloo_weight_transfer import GlooWeightSender, PackedWeights
from agentrl.common.inference.launcher import VLLMServer, build_command, build_env, free_port
from agentrl.common.inference.pool import InferencePool
from agentrl.common.inference.vllm_plugin import BACKEND_NAME
from agentrl.common.models import default_corpus, init_tiny_model

pytestmark = pytest.mark.slow
MATCH_TOLERANCE = 1e-4
# Noise added to every weight: moves log-probs by far more than the tolerance.
PERTURBATION_STD = 0.05
CONFIG = InferenceServerConfig(max_model_len=512, kv_cache_gib=1, max_num_seqs=16)
# The group's receive/send timeout: short, so the stall test waits little, yet far above what a
# transfer of the tiny model takes on 2 loaded cores (~0.5 s).
TIMEOUT_S = 5.0
NUM_NEW_TOKENS = 8
PROMPT = "What is 17 * 23? <code>print(17 * 23)</code>"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(500), seed=1)


@pytest.fixture(scope="module")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[list[VLLMServer]]:
    """Two servers with `--weight-transfer-config '{"backend": "agentrl_gloo"}'`."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    started = []
    try:
        for name in ("a", "b"):
            port = free_port()
            command = build_command(CONFIG, model_dir, port) + [
                "--weight-transfer-config", json.dumps({"backend": BACKEND_NAME})]
            server = VLLMServer(command, build_env(CONFIG), f"http://127.0.0.1:{port}",
                                logs / f"vllm-{name}.log")
            server.start()
            started.append(server)
        for server in started:
            server.wait_ready(CONFIG.start_timeout_s)
            print(f"{server.url}: engine start {server.start_time_s:.1f} s")
        yield started
    finally:
        for server in started:
            server.stop()


def prompt_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(PROMPT, add_special_tokens=False).input_ids


def perturbed_weights(model_dir: Path, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * PERTURBATION_STD)
    return model


def reference(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], list[float]]:
    """transformers' greedy continuation, and the log-prob of every token after the first."""
    with torch.no_grad():
        sequence = model.generate(torch.tensor([prompt]), max_new_tokens=NUM_NEW_TOKENS,
                                  min_new_tokens=NUM_NEW_TOKENS, do_sample=False)[0].tolist()
        logprobs = torch.log_softmax(model(torch.tensor([sequence])).logits[0], dim=-1)
    return sequence[len(prompt):], [logprobs[i - 1, sequence[i]].item()
                                    for i in range(1, len(sequence))]


async def served(url: str, prompt: list[int]) -> tuple[list[int], list[float], list[int]]:
    """One server's greedy continuation, its log-probs (prompt's, then the sampled tokens'),
    and the weight version of each sampled token."""
    pool = InferencePool([url])
    try:
        result = await pool.generate("gloo-test", prompt, {
            "max_tokens": NUM_NEW_TOKENS, "temperature": 0.0, "ignore_eos": True, "logprobs": 0})
        scored = await pool.score(prompt, url)
    finally:
        await pool.close()
    return result.token_ids, scored[1:] + result.logprobs, result.policy_versions


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


async def push(urls: list[str], sender: GlooWeightSender, packed: PackedWeights,
               version: int) -> float:
    """The transfer as the trainer runs it; returns the pause window in seconds."""
    pool = InferencePool(urls)
    try:
        paused_at = time.perf_counter()
        await control.pause(pool, "keep")
        try:
            await asyncio.to_thread(sender.start)
            await asyncio.to_thread(sender.update, packed)
            await asyncio.to_thread(sender.finish)
            await control.reset_prefix_cache(pool)
            await control.set_weight_version(pool, version)
        finally:
            await control.resume(pool)
        return time.perf_counter() - paused_at
    finally:
        await pool.close()


def test_transfer_makes_every_server_serve_the_sent_weights(servers, model_dir) -> None:
    urls = [server.url for server in servers]
    prompt = prompt_ids(model_dir)
    expected_tokens, expected_logprobs = reference(perturbed_weights(model_dir, 0), prompt)

    async def body():
        before = [await served(url, prompt) for url in urls]
        started_at = time.perf_counter()
        # Layout and checksum before the pause: generation goes on meanwhile.
        packed = PackedWeights.pack(perturbed_weights(model_dir, 0).state_dict())
        sender = GlooWeightSender(urls, timeout_s=TIMEOUT_S)
        await asyncio.to_thread(sender.connect)
        pause_s = await push(urls, sender, packed, version=1)
        total_s = time.perf_counter() - started_at
        sender.close()
        return before, [await served(url, prompt) for url in urls], packed, pause_s, total_s

    before, after, packed, pause_s, total_s = asyncio.run(body())
    print(f"{packed.num_bytes} bytes to {len(urls)} servers: pause window {pause_s:.3f} s, "
          f"total (pack + connect + pause window) {total_s:.3f} s")
    for (tokens_before, logprobs_before, _), (tokens, logprobs, versions) in zip(before, after):
        assert max_diff(logprobs_before, expected_logprobs) > 100 * MATCH_TOLERANCE
        assert tokens == expected_tokens
        assert max_diff(logprobs, expected_logprobs) < MATCH_TOLERANCE
        assert versions == [1] * NUM_NEW_TOKENS


def test_bad_checksum_and_stalled_trainer_leave_the_served_weights_alone(servers,
                                                                        model_dir) -> None:
    url = servers[0].url
    prompt = prompt_ids(model_dir)
    model = perturbed_weights(model_dir, 1)
    expected_tokens, expected_logprobs = reference(model, prompt)
    packed = PackedWeights.pack(model.state_dict())
    sender = GlooWeightSender([url], timeout_s=TIMEOUT_S)

    async def body():
        before = await served(url, prompt)
        # The receiver checksums what it got; a mismatch is /update_weights' HTTP error.
        await asyncio.to_thread(sender.start)
        with pytest.raises(ControlError) as mismatch:
            await asyncio.to_thread(sender.update, dataclasses.replace(
                packed, checksum="sha256:" + "0" * 64))
        # The trainer announces an update and never sends it: the receive times out.
        await asyncio.to_thread(sender.start)  # re-initialises the dropped group
        stall_began = time.perf_counter()
        with pytest.raises(ControlError) as stall:
            await asyncio.to_thread(sender.engines[url].client.update_weights,
                                    packed.update_info())
        stall_s = time.perf_counter() - stall_began
        unchanged = await served(url, prompt)
        # The stall went around the sender, which still holds the group the server dropped:
        # drop it, as the sender does itself after an update it saw fail.
        await asyncio.to_thread(sender.close)
        await push([url], sender, packed, version=2)
        return before, mismatch.value, stall.value, stall_s, unchanged, await served(url, prompt)

    before, mismatch, stall, stall_s, unchanged, after = asyncio.run(body())
    assert (mismatch.url, mismatch.phase) == (url, "update_weights")
    assert "checksum mismatch" in str(mismatch)
    assert (stall.url, stall.phase) == (url, "update_weights")
    assert "Timed out" in str(stall)
    assert TIMEOUT_S * 0.9 < stall_s < TIMEOUT_S + 10
    assert unchanged[0] == before[0] and max_diff(unchanged[1], before[1]) < 1e-6
    assert unchanged[2] == before[2]
    # The next transfer sets the group up again and goes through.
    assert after[0] == expected_tokens
    assert max_diff(after[1], expected_logprobs) < MATCH_TOLERANCE
    assert after[2] == [2] * NUM_NEW_TOKENS


def test_server_killed_mid_transfer_is_named_and_the_survivor_keeps_its_weights(
        servers, model_dir) -> None:
    survivor, victim = servers
    prompt = prompt_ids(model_dir)
    model = perturbed_weights(model_dir, 2)
    expected_tokens, expected_logprobs = reference(model, prompt)
    packed = PackedWeights.pack(model.state_dict())
    sender = GlooWeightSender([survivor.url, victim.url], timeout_s=TIMEOUT_S)

    async def body():
        before = await served(survivor.url, prompt)
        await asyncio.to_thread(sender.connect)
        pool = InferencePool([survivor.url, victim.url])
        await control.pause(pool, "keep")
        try:
            await asyncio.to_thread(sender.start)
            victim.kill()
            failed_at = time.perf_counter()
            with pytest.raises(ControlError) as failure:
                await asyncio.to_thread(sender.update, packed)
            failure_s = time.perf_counter() - failed_at
        finally:
            await control.post_each(pool, "/resume", "resume", urls=[survivor.url])
            await pool.close()
        after = await served(survivor.url, prompt)
        # The survivor's session was closed (discarded): a new transfer starts and loads.
        retry = GlooWeightSender([survivor.url], timeout_s=TIMEOUT_S)
        await push([survivor.url], retry, packed, version=3)
        retry.close()
        return before, failure.value, failure_s, after, await served(survivor.url, prompt)

    before, failure, failure_s, after, retried = asyncio.run(body())
    print(f"failure after {failure_s:.3f} s: {failure}")
    assert (failure.url, failure.phase) == (victim.url, "update_weights")
    assert victim.url in str(failure) and "update_weights" in str(failure)
    assert failure_s < TIMEOUT_S + 5
    assert list(sender.engines) == [survivor.url]  # the victim's group was dropped
    sender.close()
    # The survivor still serves what it served before, under the same version.
    assert after[0] == before[0] and max_diff(after[1], before[1]) < 1e-6
    assert after[2] == before[2]
    assert retried[0] == expected_tokens
    assert max_diff(retried[1], expected_logprobs) < MATCH_TOLERANCE
    assert retried[2] == [3] * NUM_NEW_TOKENS
