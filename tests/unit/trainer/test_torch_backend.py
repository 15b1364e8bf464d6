"""The torch backend on a tiny saved checkpoint: exact gradient accumulation, clipping and the
schedule, weight export that transformers loads back, gradient checkpointing, clear errors."""

from __future__ import annotations

import pytest
import torch

from agentrl.common.config import AgentRLConfig, AlgorithmConfig
from agentrl.trainer.backends import create_backend
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.backends.torch.backend import TorchBackend
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn
from agentrl.trainer.packing import pack_micro_batches

LENGTHS = [12, 30, 7, 21, 16, 9]
PROMPT_TOKENS = 4  # loss mask 0 on the first tokens of each sequence


def backend_for(path, **kwargs) -> TorchBackend:
    settings = kwargs.pop("settings", OptimizerSettings(learning_rate=1e-2, max_grad_norm=1.0))
    return TorchBackend(path, settings, device="cpu", **kwargs)


def rl_batch(backend: TorchBackend, seed: int = 0):
    """Sequences with masks, per-token advantages and old log-probs off the current policy."""
    generator = torch.Generator().manual_seed(seed)
    vocab = len(backend.tokenizer)
    token_ids = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in LENGTHS]
    masks = [[0.0] * PROMPT_TOKENS + [1.0] * (n - PROMPT_TOKENS) for n in LENGTHS]
    advantages = torch.randn(len(LENGTHS), generator=generator).tolist()
    (row,) = pack_micro_batches(token_ids, sum(LENGTHS))
    ((current, _),) = backend.logprobs([row])
    old, start = [], 0
    for i in row.sample_indices:  # back to per-sequence lists, with some noise
        n = LENGTHS[i]
        old.append(current[0, start : start + n] + 0.2 * torch.randn(n, generator=generator))
        start += n
    by_index = {i: o.tolist() for i, o in zip(row.sample_indices, old, strict=True)}
    return token_ids, {
        "loss_mask": masks,
        "advantages": [[a] * n for a, n in zip(advantages, LENGTHS, strict=True)],
        "old_logprobs": [by_index[i] for i in range(len(LENGTHS))],
    }


def one_step(backend: TorchBackend, token_ids, per_token, token_budget: int):
    micro_batches = pack_micro_batches(token_ids, token_budget, per_token)
    counts = backend.global_counts(
        sum(
            (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
            GlobalTokenCounts(0, 0, 0),
        )
    )
    return backend.train_step(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))


def test_one_or_many_micro_batches_give_the_same_gradient_and_norm(tiny_checkpoint):
    results = []
    for budget in (sum(LENGTHS), 32):
        backend = backend_for(tiny_checkpoint)
        token_ids, per_token = rl_batch(backend)
        micro_batches = pack_micro_batches(token_ids, budget, per_token)
        counts = backend.global_counts(
            sum(
                (
                    GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index)
                    for mb in micro_batches
                ),
                GlobalTokenCounts(0, 0, 0),
            )
        )
        metrics = backend.forward_backward(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))
        gradient = torch.cat([p.grad.flatten() for p in backend.model.parameters()])
        results.append(
            (len(micro_batches), metrics["loss"], gradient, backend.optimizer_step().grad_norm)
        )
    (num_1, loss_1, grad_1, norm_1), (num_n, loss_n, grad_n, norm_n) = results
    assert num_1 == 1 and num_n > 2
    assert loss_1 == pytest.approx(loss_n, rel=1e-5)
    assert torch.allclose(grad_1, grad_n, rtol=1e-4, atol=1e-7)
    assert norm_1 == pytest.approx(norm_n, rel=1e-4) and norm_1 > 0


def test_grad_norm_is_reported_before_clipping_and_the_update_is_clipped(tiny_checkpoint):
    settings = OptimizerSettings(learning_rate=1e-2, max_grad_norm=1e-3)
    backend = backend_for(tiny_checkpoint, settings=settings)
    token_ids, per_token = rl_batch(backend)
    micro_batches = pack_micro_batches(token_ids, 128, per_token)
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    backend.forward_backward(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))
    expected = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in backend.model.parameters()])
    )
    stats = backend.optimizer_step()
    assert stats.grad_norm == pytest.approx(float(expected), rel=1e-5)
    assert stats.grad_norm > 10 * settings.max_grad_norm  # clipping was active
    assert all(p.grad is None for p in backend.model.parameters())
    assert stats.step == 1 and backend.step == 1


def test_learning_rate_schedule_by_hand():
    cosine = OptimizerSettings(learning_rate=1.0, warmup_steps=2, schedule="cosine", total_steps=6)
    assert [round(cosine.lr_factor(s), 6) for s in range(7)] == [
        0.5,
        1.0,
        1.0,
        0.853553,
        0.5,
        0.146447,
        0.0,
    ]
    linear = OptimizerSettings(learning_rate=1.0, schedule="linear", total_steps=4)
    assert [linear.lr_factor(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="needs total_steps"):
        OptimizerSettings(learning_rate=1.0, schedule="cosine")


def test_hf_weights_load_in_transformers_and_give_the_same_logprobs(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    backend = backend_for(tiny_checkpoint)
    token_ids, per_token = rl_batch(backend)
    one_step(backend, token_ids, per_token, 128)  # weights now differ from the checkpoint
    weights = backend.hf_weights()
    # Tied embeddings appear under both names (vLLM's reload updates a tied head only then).
    assert backend.hf_config.tie_word_embeddings
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    export = tmp_path / "weights"
    export.mkdir()
    backend.hf_config.to_json_file(export / "config.json")
    save_file(weights, export / "model.safetensors", metadata={"format": "pt"})
    reloaded = TorchBackend.__new__(TorchBackend)
    reloaded.__dict__.update(backend.__dict__)
    reloaded.model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    micro_batches = pack_micro_batches(token_ids, 128)
    for (a, _), (b, _) in zip(
        backend.logprobs(micro_batches), reloaded.logprobs(micro_batches), strict=True
    ):
        assert torch.equal(a, b)


def test_gradient_checkpointing_gives_the_same_gradient(tiny_checkpoint):
    gradients = []
    for checkpointing in (False, True):
        backend = backend_for(tiny_checkpoint, gradient_checkpointing=checkpointing)
        token_ids, per_token = rl_batch(backend)
        micro_batches = pack_micro_batches(token_ids, 128, per_token)
        counts = sum(
            (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
            GlobalTokenCounts(0, 0, 0),
        )
        backend.forward_backward(micro_batches, policy_loss_fn(AlgorithmConfig(), counts))
        gradients.append(torch.cat([p.grad.flatten() for p in backend.model.parameters()]))
    assert gradients[0].abs().max() > 0
    assert torch.allclose(gradients[0], gradients[1], atol=1e-7)


def test_bfloat16_autocast_stays_close_to_float32(tiny_checkpoint):
    token_ids = [list(range(5, 40)), list(range(50, 70))]
    micro_batches = pack_micro_batches(token_ids, 64)
    full = backend_for(tiny_checkpoint).logprobs(micro_batches)[0][0]
    half_backend = backend_for(tiny_checkpoint, dtype="bfloat16")
    half = half_backend.logprobs(micro_batches)[0][0]
    assert next(half_backend.model.parameters()).dtype == torch.float32  # master weights
    assert not torch.equal(full, half)  # bf16 really was used
    assert torch.allclose(full, half, atol=0.1)


def test_clear_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        backend_for(tiny_checkpoint, parallelism="fsdp2")
    with pytest.raises(ValueError, match="not a Hugging Face checkpoint directory"):
        backend_for(tmp_path)
    with pytest.raises(ValueError, match="float16 would need loss scaling"):
        backend_for(tiny_checkpoint, dtype="float16")
    config = AgentRLConfig(model={"path": str(tiny_checkpoint)})
    config.trainer.backend = "jax"  # past validation, as a hand-built config could be
    with pytest.raises(ValueError, match="trainer.backend 'jax' is not built; choose one of torch"):
        create_backend(config)
