"""The Megatron backend's weights reach a real `vllm serve` (CPU, tiny Qwen3) through the
weight-transport interface: after one RL step the served log-probs differ from the trainer's
(the drift check fires), after the native (`agentrl_gloo`) sync they agree to 1e-4 in float32,
so what vLLM serves is exactly the Hugging Face conversion of the Megatron shards.

One vLLM server for the module (~3 GiB, 50-120 s to start on 2 shared cores)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from agentrl.common.config import AlgorithmConfig, InferenceServerConfig
from agentrl.common.inference import control
from agentrl.common.inference.launcher import VLLMServer
from agentrl.common.inference.pool import InferencePool
from agentrl.common.models import default_corpus, init_tiny_model

pytestmark = pytest.mark.slow
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
    import torch.distributed as dist
    from megatron.core import parallel_state

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
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
