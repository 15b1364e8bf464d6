"""The Megatron backend's weights reach a real `vllm serve` (CPU, tiny Qwen3) through the
weight-transport interface: after one RL step the served log-probs differ from the trainer's
(the drift check fires), after the native (`agentrl_gloo`) sync they agree to 1e-4 in float32,
so what vLLM serves is exactly the Hugging Face conversion of the Megatron shards. Then the RL
loop (`run_training`, what `agentrl train` runs) takes two steps with `trainer.backend:
megatron` against the same server, with a stand-in rollout worker and a private redis-server.

One vLLM server for the module (~3 GiB, 50-120 s to start on 2 shared cores)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from loop_helpers import release_megatron, vllm_rollout

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from agentrl.common.config import AlgorithmConfig, InferenceServerConfig
from agentrl.common.inference import control
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.common.models import default_corpus, init_tiny_model

# The module's first test also waits for vLLM's start (up to its 300 s start_timeout_s on a
# loaded machine: pytest's default 300 s ran out there once, in vLLM's start).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MATCH_TOLERANCE = 1e-4
CONFIG = InferenceServerConfig(max_model_len=512, kv_cache_gib=1, max_num_seqs=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_model(tmp_path_factory.mktemp("model"), default_corpus(500), seed=1)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    with VLLMServer.launch(CONFIG, model_dir, logs / "vllm.log") as started:
        yield started


def test_a_megatron_step_is_served_after_the_native_sync(server, model_dir) -> None:
    from agentrl.trainer.backends.interface import OptimizerSettings
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import ParallelLayout
    from agentrl.trainer.drift_check import WeightDriftError, check_logprob_drift
    from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn
    from agentrl.trainer.packing import pack_micro_batches
    from agentrl.trainer.transports.vllm_native import NativeTransport

    backend = MegatronBackend(
        model_dir, OptimizerSettings(learning_rate=1e-2), layout=ParallelLayout(tp=1, pp=1)
    )
    try:
        text = "What is 17 * 23? <code>print(17 * 23)</code><output>391</output>"
        sequence = backend.tokenizer(text, add_special_tokens=False).input_ids
        generator = torch.Generator().manual_seed(0)
        vocab = len(backend.tokenizer)
        token_ids = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (20, 31)]
        per_token = {
            "loss_mask": [[0] * 4 + [1] * (n - 4) for n in (20, 31)],
            "advantages": [[1.0] * 20, [-1.0] * 31],
            "old_logprobs": [[-4.0] * 20, [-4.0] * 31],
        }
        micro_batches = pack_micro_batches(token_ids, 64, per_token)
        counts = GlobalTokenCounts.of(
            micro_batches[0].per_token["loss_mask"], micro_batches[0].seq_index
        )
        backend.train_step(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))

        async def body():
            pool = InferencePool([server.url], request_timeout_s=120)
            transport = NativeTransport(backend, pool, timeout_s=30.0)
            try:
                with pytest.raises(WeightDriftError, match="differ by up to"):
                    await check_logprob_drift(backend, pool, sequence, MATCH_TOLERANCE)
                version = max((await control.weight_versions(pool)).values()) + 1
                result = await transport.sync(version)
                drift = await check_logprob_drift(backend, pool, sequence, MATCH_TOLERANCE)
                return result, drift
            finally:
                await transport.close()
                await pool.close()

        result, drift = asyncio.run(body())
        print(
            f"megatron -> vLLM: {result.num_bytes} bytes, total {result.total_s:.3f} s, "
            f"drift {drift.max_abs_diff:.2e}"
        )
        assert result.num_bytes > 0
        assert drift.max_abs_diff < MATCH_TOLERANCE and drift.num_tokens == len(sequence) - 1
    finally:
        release_megatron()


def test_run_training_with_the_megatron_backend(server, model_dir, redis_url, tmp_path) -> None:
    """`agentrl train`'s loop (`run_training`) with `trainer.backend: megatron`: two steps,
    each synced to the server (drift ~0 after every sync) and checkpointed; then the loop
    started again resumes from the step-2 checkpoint (model and AdamW state through the
    backend's load_state_dict) and takes step 3."""
    from agentrl.common.config import load_config
    from agentrl.common.inference.launcher import free_port
    from agentrl.trainer.metrics import read_step_metrics
    from agentrl.trainer.rl_loop import run_training

    data = tmp_path / "train.jsonl"
    prompts = ["What is 2 + 3?", "What is 7 * 6?", "What is 9 - 4?", "What is 8 / 2?"]
    data.write_text(
        "".join(
            json.dumps({"prompt": p, "ground_truth": "0", "task_type": "math"}) + "\n"
            for p in prompts
        )
    )
    run_id = "megatron-loop"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "run": {"run_id": run_id, "output_dir": str(tmp_path / "run")},
                "model": {"path": str(model_dir)},
                "data": {"train_path": str(data)},
                "redis": {"url": redis_url},
                "inference": {"urls": [server.url], "server": CONFIG.model_dump(mode="json")},
                "trainer": {
                    "backend": "megatron",
                    "megatron": {"tensor_parallel_size": 1},
                    "batch_size": 2,
                    "max_staleness": 1,
                    "device": "cpu",
                    "micro_batch_tokens": 256,
                    "checkpoint_interval_steps": 1,
                    "total_steps": 2,
                    "grpc_port": free_port(),
                    "http_port": free_port(),
                },
                "algorithm": {"group_size": 4, "learning_rate": 1e-3},
            }
        )
    )
    config = load_config(recipe, env={})  # what `agentrl train --recipe` validates and runs
    stop = threading.Event()
    worker = threading.Thread(
        target=vllm_rollout, args=(server.url, redis_url, run_id, stop), daemon=True
    )
    worker.start()
    try:
        result = run_training(config, wait_timeout_s=120)
        resumed = run_training(config, max_steps=3, wait_timeout_s=120)
    finally:
        stop.set()
        worker.join(timeout=30)
        release_megatron()
    records = read_step_metrics(tmp_path / "run")
    print([{k: r[k] for k in ("step", "loss", "grad_norm", "logprob_drift_max")} for r in records])
    assert (result.steps, result.policy_version) == (2, 2)
    assert resumed.steps == 3
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["grad_norm"] > 0 for r in records)
    assert all(r["logprob_drift_max"] < 1e-3 for r in records)
    assert (tmp_path / "run" / "checkpoints").is_dir()
