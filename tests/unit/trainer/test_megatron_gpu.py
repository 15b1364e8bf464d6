"""The Megatron backend on one CUDA GPU (marked `gpu`, skipped without CUDA). NOT RUN YET: no
GPU was available when it was written; docs/trainer.md says what has and has not run.

- logits of megatron-core's GPTModel equal the Hugging Face model's in bf16 tolerance;
- one RL step gives the torch backend's loss on the same batch (float32);
- ten steps on a fixed batch reduce the loss;
- activation recompute (full, selective) leaves the gradient unchanged;
- tokens/s and peak memory of a 0.5B-class random Qwen3 at TP 1, beside the torch backend
  (printed; `-s` shows them).

On the GPU machine (Python 3.12, torch + CUDA, no internet), from the repository root, with
megatron-core's cp312 wheel carried in `.whl/` (docs/trainer.md, "Megatron backend"):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python3 tests/unit/trainer/test_megatron_gpu.py
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
LENGTHS = [96, 200, 57, 143, 180, 77, 250, 121]


def save_model(directory, *, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int):
    """A random Qwen3 checkpoint with a byte-level tokenizer (nothing downloaded)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from agentrl.common.models import default_corpus, train_tokenizer

    tokenizer = train_tokenizer(default_corpus(200, seed=0), vocab_size=400)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rl_micro_batches(vocab: int, token_budget: int, seed: int = 0):
    from agentrl.trainer.loss import GlobalTokenCounts
    from agentrl.trainer.packing import pack_micro_batches

    generator = torch.Generator().manual_seed(seed)
    token_ids = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in LENGTHS]
    per_token = {
        "loss_mask": [[0.0] * 16 + [1.0] * (n - 16) for n in LENGTHS],
        "advantages": [
            [float(a)] * n for a, n in zip(torch.randn(8, generator=generator), LENGTHS)
        ],
        "old_logprobs": [(-5.0 - torch.rand(n, generator=generator)).tolist() for n in LENGTHS],
    }
    micro_batches = pack_micro_batches(token_ids, token_budget, per_token)
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    return micro_batches, counts


def backends(path, dtype: str):
    from agentrl.trainer.backends.interface import OptimizerSettings
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import ParallelLayout
    from agentrl.trainer.backends.torch.backend import TorchBackend

    settings = OptimizerSettings(learning_rate=1e-4)
    megatron = MegatronBackend(path, settings, layout=ParallelLayout(), dtype=dtype)
    reference = TorchBackend(path, settings, device="cuda", dtype=dtype)
    return megatron, reference


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return save_model(
        tmp_path_factory.mktemp("small"), hidden=256, layers=4, heads=8, kv_heads=4, ffn=768
    )


def test_logits_match_hugging_face_in_bf16(small_model):
    megatron, reference = backends(small_model, "bfloat16")
    micro_batches, _ = rl_micro_batches(len(megatron.tokenizer), 1024)
    for (got, _), (expected, _) in zip(
        megatron.logprobs(micro_batches), reference.logprobs(micro_batches), strict=True
    ):
        torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)


def test_one_rl_step_matches_the_torch_backends_loss_and_ten_steps_reduce_it(small_model):
    from agentrl.common.config import AlgorithmConfig
    from agentrl.trainer.loss import policy_loss_fn

    megatron, reference = backends(small_model, "float32")
    micro_batches, counts = rl_micro_batches(len(megatron.tokenizer), 1024)
    loss_fn = policy_loss_fn(AlgorithmConfig(), counts)
    got, _ = megatron.train_step(micro_batches, loss_fn)
    expected, _ = reference.train_step(micro_batches, loss_fn)
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    losses = [got["loss"]]
    for _ in range(9):
        losses.append(megatron.train_step(micro_batches, loss_fn)[0]["loss"])
    print("megatron losses over 10 steps:", [round(x, 4) for x in losses])
    assert losses[-1] < losses[0]


def test_recompute_gives_the_same_gradient(small_model):
    """`recompute: full` and `selective` (CUDA only: megatron saves the CUDA RNG state)."""
    from agentrl.common.config import AlgorithmConfig
    from agentrl.trainer.backends.interface import OptimizerSettings
    from agentrl.trainer.backends.megatron.backend import MegatronBackend
    from agentrl.trainer.backends.megatron.convert import ParallelLayout
    from agentrl.trainer.loss import policy_loss_fn

    grads = {}
    for recompute in ("none", "full", "selective"):
        backend = MegatronBackend(
            small_model,
            OptimizerSettings(learning_rate=1e-4),
            layout=ParallelLayout(),
            recompute=recompute,
        )
        micro_batches, counts = rl_micro_batches(len(backend.tokenizer), 1024)
        backend.forward_backward(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))
        grads[recompute] = {n: p.grad.float().cpu() for n, p in backend.model.named_parameters()}
    for recompute in ("full", "selective"):
        for name, grad in grads["none"].items():
            torch.testing.assert_close(grads[recompute][name], grad, atol=1e-5, rtol=1e-4)


def test_throughput_and_peak_memory_beside_the_torch_backend(tmp_path):
    """A 0.5B-class Qwen3 shape (hidden 896, 24 layers, 14/2 heads, ffn 4864), bf16, TP 1."""
    from agentrl.common.config import AlgorithmConfig
    from agentrl.trainer.loss import policy_loss_fn

    path = save_model(tmp_path, hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864)
    micro_batches, counts = rl_micro_batches(400, 2048)
    tokens = sum(mb.num_real_tokens for mb in micro_batches)
    loss_fn = policy_loss_fn(AlgorithmConfig(), counts)
    for name, backend in zip(("megatron", "torch"), backends(path, "bfloat16"), strict=True):
        backend.train_step(micro_batches, loss_fn)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(3):
            backend.train_step(micro_batches, loss_fn)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        print(
            f"{name}: {3 * tokens / elapsed:,.0f} tokens/s (train steps), peak "
            f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on {torch.cuda.get_device_name()}"
        )
        del backend
        torch.cuda.empty_cache()


if __name__ == "__main__":
    raise SystemExit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "-m", "gpu", __file__]))
