"""The weight transports and the `agentrl_gloo` engine against two real `vllm serve` on CPU
(tiny model), as the trainer uses them.

- Both transports (`disk`, `vllm` native): after `sync(v)` every server's greedy tokens and
  log-probs equal those of the trainer's (perturbed) weights (drift below 1e-4 in float32; the
  drift check fires before the sync and passes after it), tokens carry version v, and the
  result reports the pause window apart from the total and each phase.
- The native sync moves the bytes outside the pause window: a request made while a server has
  the receive in flight completes, unpaused, on the old weights and label; the pause window is
  shorter than the total less the transfer and the wait.
- The engine through vLLM's four-phase API (`GlooWeightSender`): a bad checksum and a stalled
  trainer fail the wait (/update_weights {"wait": true}) with the cause, within the timeout;
  finish refuses an update that was not waited for; a discard ends a receive in flight at once.
  All leave the served weights alone; the next transfer re-initialises the group and works. A
  trainer that died with its session open (staged, not finished) does not block the next one.
- A server killed mid-transfer (after the broadcast, before the wait) fails the native sync
  with its URL and the phase; the survivor discards its verified staged copy and keeps serving
  its previous weights and version; the next push (PoolWeights) ejects the dead server and
  serves the survivor; a new server process on the dead one's address is caught up to the
  current version alone. (Last in the module: it kills one of the module's two servers.)

Two servers for the module, started together (~3 GiB each, 40-90 s on 2 shared cores), each
with `--weight-transfer-config '{"backend": "agentrl_gloo"}'` as the launcher starts them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from agentrl.common.config import InferenceServerConfig
from agentrl.common.inference import control
from agentrl.common.inference.control import ControlError
from agentrl.common.inference.gloo_weight_transfer import (
    WAIT_PHASE,
    GlooWeightSender,
    HTTPWeightTransferClient,
    PackedWeights,
)
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.common.inference.vllm_plugin import BACKEND_NAME
from agentrl.common.models import default_corpus, init_tiny_model
from agentrl.trainer.drift_check import WeightDriftError, check_logprob_drift
from agentrl.trainer.pool_weights import PoolWeights
from agentrl.trainer.transports.disk import DiskTransport
from agentrl.trainer.transports.interface import WeightSyncError
from agentrl.trainer.transports.vllm_native import NativeTransport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
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
def servers(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[VLLMServer]]:
    """Two servers, as the launcher starts them (the agentrl_gloo engine by default)."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    started = []
    try:
        for name in ("a", "b"):
            server = VLLMServer.spawn(CONFIG, model_dir, logs / f"vllm-{name}.log")
            assert BACKEND_NAME in " ".join(server.command)
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
        sequence = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NUM_NEW_TOKENS,
            min_new_tokens=NUM_NEW_TOKENS,
            do_sample=False,
        )[0].tolist()
        logprobs = torch.log_softmax(model(torch.tensor([sequence])).logits[0], dim=-1)
    return sequence[len(prompt) :], [
        logprobs[i - 1, sequence[i]].item() for i in range(1, len(sequence))
    ]


async def served(url: str, prompt: list[int]) -> tuple[list[int], list[float], list[int]]:
    """One server's greedy continuation, its log-probs (prompt's, then the sampled tokens'),
    and the weight version of each sampled token."""
    pool = InferencePool([url])
    try:
        result = await pool.generate(
            "gloo-test",
            prompt,
            {"max_tokens": NUM_NEW_TOKENS, "temperature": 0.0, "ignore_eos": True, "logprobs": 0},
        )
        scored = await pool.score(prompt, url)
    finally:
        await pool.close()
    return result.token_ids, scored[1:] + result.logprobs, result.policy_versions


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


async def push(
    urls: list[str], sender: GlooWeightSender, packed: PackedWeights, version: int
) -> float:
    """The transfer as the trainer runs it (NativeTransport._transfer: connect, then start and
    send while the servers generate), then the load in the pause window; returns the pause
    window in seconds."""
    await asyncio.to_thread(sender.connect)
    await asyncio.to_thread(sender.start)
    await asyncio.to_thread(sender.update, packed)
    await asyncio.to_thread(sender.wait)
    pool = InferencePool(urls)
    try:
        paused_at = time.perf_counter()
        await control.pause(pool, "keep")
        try:
            await asyncio.to_thread(sender.finish)
            await control.reset_prefix_cache(pool)
            await control.set_weight_version(pool, version)
        finally:
            await control.resume(pool)
        return time.perf_counter() - paused_at
    finally:
        await pool.close()


def trainer_backend(model_dir: Path, seed: int):
    """A torch backend of the served checkpoint whose weights then move (as a step would)."""
    from agentrl.trainer.backends.interface import OptimizerSettings
    from agentrl.trainer.backends.torch.backend import TorchBackend

    backend = TorchBackend(model_dir, OptimizerSettings(learning_rate=1e-3), device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in backend.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * PERTURBATION_STD)
    backend.model.eval()
    return backend


@pytest.mark.parametrize("kind", ["disk", "vllm"])
def test_each_transport_makes_every_server_serve_the_trainers_weights(
    servers, model_dir, tmp_path, kind
) -> None:
    urls = [server.url for server in servers]
    prompt = prompt_ids(model_dir)
    backend = trainer_backend(model_dir, seed={"disk": 11, "vllm": 12}[kind])
    expected_tokens, expected_logprobs = reference(backend.model, prompt)
    sequence = prompt + expected_tokens

    async def body():
        pool = InferencePool(urls, request_timeout_s=120)
        transport = (
            DiskTransport(backend, pool, tmp_path)
            if kind == "disk"
            else NativeTransport(backend, pool, timeout_s=TIMEOUT_S)
        )
        try:
            version = max((await control.weight_versions(pool)).values()) + 1
            with pytest.raises(WeightDriftError, match="differ by up to"):
                await check_logprob_drift(backend, pool, sequence, MATCH_TOLERANCE)
            results = [await transport.sync(version), await transport.sync(version + 1)]
            drift = await check_logprob_drift(backend, pool, sequence, MATCH_TOLERANCE)
            after = [await served(url, prompt) for url in urls]
            return version, results, drift, after
        finally:
            await transport.close()
            await pool.close()

    version, results, drift, after = asyncio.run(body())
    for result in results:
        print(
            f"{kind}: {result.num_bytes} bytes to {len(urls)} servers, pause window "
            f"{result.pause_s:.3f} s, total {result.total_s:.3f} s, phases "
            f"{ {name: round(s, 3) for name, s in result.phases_s.items()} }"
        )
        assert 0 < result.pause_s < result.total_s
        assert result.checksum.startswith("sha256:") and result.num_bytes > 0
        if kind == "vllm":  # the bytes move before the pause, not inside it
            outside_s = result.phases_s["transfer_s"] + result.phases_s["wait_staged_s"]
            assert result.pause_s < result.total_s - outside_s
    assert results[1].version == version + 1
    assert drift.max_abs_diff < MATCH_TOLERANCE and drift.num_tokens == len(sequence) - 1
    for tokens, logprobs, versions in after:
        assert tokens == expected_tokens
        assert max_diff(logprobs, expected_logprobs) < MATCH_TOLERANCE
        assert versions == [version + 1] * NUM_NEW_TOKENS


def test_native_sync_moves_the_bytes_while_the_servers_generate(
    servers, model_dir, monkeypatch
) -> None:
    urls = [server.url for server in servers]
    prompt = prompt_ids(model_dir)
    backend = trainer_backend(model_dir, seed=13)
    expected_tokens, _ = reference(backend.model, prompt)
    kick_off = HTTPWeightTransferClient.update_weights
    during: dict[str, tuple[bool, tuple]] = {}

    def kick_off_then_generate(
        client: HTTPWeightTransferClient, update_info: dict, timeout_s: float | None = None
    ) -> None:
        kick_off(client, update_info, timeout_s)
        if "names" in update_info:  # the server is receiving; not a byte is sent yet
            paused = httpx.get(f"{client.url}/is_paused", timeout=10).json()["is_paused"]
            during[client.url] = (paused, asyncio.run(served(client.url, prompt)))

    async def body():
        pool = InferencePool(urls, request_timeout_s=120)
        # A generous group timeout: the receive waits for the broadcast while we generate.
        transport = NativeTransport(backend, pool, timeout_s=60)
        try:
            label = max((await control.weight_versions(pool)).values())
            await control.set_weight_version(pool, label)  # one label on both servers
            before = {url: await served(url, prompt) for url in urls}
            monkeypatch.setattr(HTTPWeightTransferClient, "update_weights", kick_off_then_generate)
            result = await transport.sync(label + 1)
            monkeypatch.setattr(HTTPWeightTransferClient, "update_weights", kick_off)
            return label, before, result, {url: await served(url, prompt) for url in urls}
        finally:
            await transport.close()
            await pool.close()

    label, before, result, after = asyncio.run(body())
    print(
        f"pause window {result.pause_s:.3f} s of {result.total_s:.3f} s, phases "
        f"{ {name: round(s, 3) for name, s in result.phases_s.items()} }"
    )
    assert set(during) == set(urls)
    for url, (paused, (tokens, logprobs, versions)) in during.items():
        # Mid-transfer: not paused, the old weights under the old label.
        assert paused is False
        assert tokens == before[url][0] and max_diff(logprobs, before[url][1]) < 1e-6
        assert versions == [label] * NUM_NEW_TOKENS
        assert after[url][0] == expected_tokens and after[url][2] == [label + 1] * NUM_NEW_TOKENS
    outside_s = result.phases_s["transfer_s"] + result.phases_s["wait_staged_s"]
    assert result.pause_s < result.total_s - outside_s


def test_transfer_makes_every_server_serve_the_sent_weights(servers, model_dir) -> None:
    urls = [server.url for server in servers]
    prompt = prompt_ids(model_dir)
    expected_tokens, expected_logprobs = reference(perturbed_weights(model_dir, 0), prompt)

    async def body():
        before = [await served(url, prompt) for url in urls]
        started_at = time.perf_counter()
        # Layout, checksum and transfer before the pause: generation goes on meanwhile.
        packed = PackedWeights.pack(perturbed_weights(model_dir, 0).state_dict())
        sender = GlooWeightSender(urls, timeout_s=TIMEOUT_S)
        await asyncio.to_thread(sender.connect)
        pause_s = await push(urls, sender, packed, version=1)
        total_s = time.perf_counter() - started_at
        sender.close()
        return before, [await served(url, prompt) for url in urls], packed, pause_s, total_s

    before, after, packed, pause_s, total_s = asyncio.run(body())
    print(
        f"{packed.num_bytes} bytes to {len(urls)} servers: pause window {pause_s:.3f} s, "
        f"total (pack + connect + transfer + pause window) {total_s:.3f} s"
    )
    for (tokens_before, logprobs_before, _), (tokens, logprobs, versions) in zip(before, after):
        assert max_diff(logprobs_before, expected_logprobs) > 100 * MATCH_TOLERANCE
        assert tokens == expected_tokens
        assert max_diff(logprobs, expected_logprobs) < MATCH_TOLERANCE
        assert versions == [1] * NUM_NEW_TOKENS


def test_bad_checksum_stall_and_discard_leave_the_served_weights_alone(servers, model_dir) -> None:
    url = servers[0].url
    prompt = prompt_ids(model_dir)
    model = perturbed_weights(model_dir, 1)
    expected_tokens, expected_logprobs = reference(model, prompt)
    packed = PackedWeights.pack(model.state_dict())
    sender = GlooWeightSender([url], timeout_s=TIMEOUT_S)

    async def body():
        before = await served(url, prompt)
        # The receiver checksums what it got; a mismatch is the wait's HTTP error.
        await asyncio.to_thread(sender.start)
        await asyncio.to_thread(
            sender.update, dataclasses.replace(packed, checksum="sha256:" + "0" * 64)
        )
        with pytest.raises(ControlError) as mismatch:
            await asyncio.to_thread(sender.wait)
        # The trainer announces an update and never sends it: finish refuses to load what was
        # not verified, and the wait reports the receive's timeout.
        await asyncio.to_thread(sender.start)  # re-initialises the dropped group
        client = sender.engines[url].client
        stall_began = time.perf_counter()
        await asyncio.to_thread(client.update_weights, packed.update_info())
        with pytest.raises(ControlError) as refused:
            await asyncio.to_thread(client.finish_weight_update)
        with pytest.raises(ControlError) as stall:
            await asyncio.to_thread(client.wait_weight_update, TIMEOUT_S + 30)
        stall_s = time.perf_counter() - stall_began
        unchanged = await served(url, prompt)
        # The stall went around the sender, which still holds the group the server dropped:
        # drop it, as the sender does itself after an update it saw fail.
        await asyncio.to_thread(sender.close)
        # A discard ends a receive in flight without waiting for its timeout.
        await asyncio.to_thread(sender.start)
        await asyncio.to_thread(sender.engines[url].client.update_weights, packed.update_info())
        discard_began = time.perf_counter()
        await asyncio.to_thread(sender.discard)
        discard_s = time.perf_counter() - discard_began
        discarded = await served(url, prompt)
        await push([url], sender, packed, version=2)
        return (
            before,
            mismatch.value,
            refused.value,
            stall.value,
            stall_s,
            unchanged,
            discard_s,
            discarded,
            await served(url, prompt),
        )

    (before, mismatch, refused, stall, stall_s, unchanged, discard_s, discarded, after) = (
        asyncio.run(body())
    )
    assert (mismatch.url, mismatch.phase) == (url, WAIT_PHASE)
    assert "checksum mismatch" in str(mismatch)
    assert (refused.url, refused.phase) == (url, "finish_weight_update")
    assert "before the update was verified" in str(refused)
    assert (stall.url, stall.phase) == (url, WAIT_PHASE)
    assert "Timed out" in str(stall)
    assert TIMEOUT_S * 0.9 < stall_s < TIMEOUT_S + 10
    assert discard_s < TIMEOUT_S / 2
    for served_meanwhile in (unchanged, discarded):
        assert served_meanwhile[0] == before[0]
        assert max_diff(served_meanwhile[1], before[1]) < 1e-6
        assert served_meanwhile[2] == before[2]
    # The next transfer sets the group up again and goes through.
    assert after[0] == expected_tokens
    assert max_diff(after[1], expected_logprobs) < MATCH_TOLERANCE
    assert after[2] == [2] * NUM_NEW_TOKENS


def test_the_next_trainer_closes_a_dead_trainers_open_session(servers, model_dir) -> None:
    """A trainer killed between start and finish leaves its session open on the server (its
    bytes staged and verified): vLLM refuses the next start until a finish. The next trainer's
    sender connects, is refused once, closes that session (loading nothing) and sends its own
    weights (the fault suite met this: a trainer SIGKILLed mid-sync, then every sync failed)."""
    url = servers[0].url
    prompt = prompt_ids(model_dir)
    dead = PackedWeights.pack(perturbed_weights(model_dir, 5).state_dict())
    model = perturbed_weights(model_dir, 6)
    expected_tokens, expected_logprobs = reference(model, prompt)
    packed = PackedWeights.pack(model.state_dict())

    async def body():
        before = await served(url, prompt)
        first = GlooWeightSender([url], timeout_s=TIMEOUT_S)
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(first.update, dead)
        await asyncio.to_thread(first.wait)  # staged; then its process dies, saying nothing
        for engine in first.engines.values():
            engine.shutdown()
            engine.client.close()
        unchanged = await served(url, prompt)
        second = GlooWeightSender([url], timeout_s=TIMEOUT_S)
        await push([url], second, packed, version=7)
        second.close()
        return before, unchanged, await served(url, prompt)

    before, unchanged, after = asyncio.run(body())
    assert unchanged[0] == before[0] and unchanged[2] == before[2]
    assert max_diff(unchanged[1], before[1]) < 1e-6
    assert after[0] == expected_tokens
    assert max_diff(after[1], expected_logprobs) < MATCH_TOLERANCE
    assert after[2] == [7] * NUM_NEW_TOKENS


def test_server_killed_mid_transfer_fails_the_native_sync_and_the_survivor_keeps_serving(
    servers, model_dir, tmp_path, monkeypatch
) -> None:
    """Then the run rides on: the next push ejects the dead server and serves the survivor, and
    when the server comes back (a new process on the same address, serving its checkpoint as
    version 0) `catch_up` gives it the current version alone, through a fresh group."""
    survivor, victim = servers
    prompt = prompt_ids(model_dir)
    backend = trainer_backend(model_dir, seed=4)
    expected_tokens, expected_logprobs = reference(backend.model, prompt)
    update = GlooWeightSender.update

    def update_then_kill(sender: GlooWeightSender, weights) -> None:
        update(sender, weights)  # every server got the bytes; one dies before the wait
        if victim.process.poll() is None:
            victim.kill()

    async def body():
        pool = InferencePool([survivor.url, victim.url], request_timeout_s=120)
        transport = NativeTransport(backend, pool, timeout_s=TIMEOUT_S)
        weights = PoolWeights(transport, pool)
        reborn = None
        try:
            before = await served(survivor.url, prompt)
            label_before = (await control.weight_versions(pool))[survivor.url]
            monkeypatch.setattr(GlooWeightSender, "update", update_then_kill)
            failed_at = time.perf_counter()
            with pytest.raises(WeightSyncError) as failure:
                await transport.sync(label_before + 1)
            failure_s = time.perf_counter() - failed_at
            monkeypatch.setattr(GlooWeightSender, "update", update)
            after = await served(survivor.url, prompt)
            # The pool still counts the dead server healthy: the push ejects it and goes on.
            retried = await weights.push(label_before + 2)
            final = await served(survivor.url, prompt)
            # The server comes back on its address, serving its checkpoint (version 0).
            reborn = VLLMServer.spawn(
                CONFIG,
                model_dir,
                tmp_path / "vllm-reborn.log",
                port=int(victim.url.rsplit(":", 1)[1]),
            )
            await asyncio.to_thread(reborn.wait_ready, CONFIG.start_timeout_s)
            caught_up = await weights.catch_up(label_before + 2)
            return (
                label_before,
                before,
                failure.value,
                failure_s,
                after,
                retried,
                final,
                weights.num_ejected,
                caught_up,
                await served(victim.url, prompt),
            )
        finally:
            await transport.close()
            await pool.close()
            if reborn is not None:
                reborn.stop()

    (
        label,
        before,
        failure,
        failure_s,
        after,
        retried,
        final,
        num_ejected,
        caught_up,
        reborn_served,
    ) = asyncio.run(body())
    print(f"failure after {failure_s:.3f} s: {failure}")
    assert victim.url in str(failure) and WAIT_PHASE in str(failure)
    assert f"{survivor.url} discarded it" in str(failure)
    assert f"version {label + 1}" in str(failure)
    assert failure_s < TIMEOUT_S + 5
    # The survivor still serves what it served before, under the same version.
    assert after[0] == before[0] and max_diff(after[1], before[1]) < 1e-6
    assert after[2] == before[2] == [label] * NUM_NEW_TOKENS
    assert retried.version == label + 2 and num_ejected == 1
    assert final[0] == expected_tokens
    assert max_diff(final[1], expected_logprobs) < MATCH_TOLERANCE
    assert final[2] == [label + 2] * NUM_NEW_TOKENS
    # The server that came back serves the current weights and version, like the survivor.
    assert caught_up == [victim.url]
    assert reborn_served[0] == expected_tokens
    assert max_diff(reborn_served[1], expected_logprobs) < MATCH_TOLERANCE
    assert reborn_served[2] == [label + 2] * NUM_NEW_TOKENS
