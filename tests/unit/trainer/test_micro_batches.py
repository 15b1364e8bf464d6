"""On the tiny Qwen3: gradient accumulation normalised by the global counts is exact, and packed
micro-batches give the padded log-probs, loss and gradient."""

from __future__ import annotations

import pytest
import torch

from agentrl.common.config import AlgorithmConfig
from agentrl.trainer.advantages import token_advantages
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss
from agentrl.trainer.packing import (
    MicroBatch,
    pack_micro_batches,
    pad_micro_batches,
    token_logprobs_and_entropy,
)

LENGTHS = [9, 23, 5, 14, 30, 7, 18, 11]
PROMPT_TOKENS = 3  # the first tokens of every sequence are prompt: loss mask 0
AGG_MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@pytest.fixture(scope="module")
def batch(tiny_qwen3, make_sequences):
    """Eight sequences with loss masks, per-sequence advantages and old log-probs that differ
    from the model's (so clipping is active on some tokens)."""
    token_ids = make_sequences(LENGTHS)
    generator = torch.Generator().manual_seed(2)
    loss_mask = [[0.0] * PROMPT_TOKENS + [1.0] * (n - PROMPT_TOKENS) for n in LENGTHS]
    loss_mask[2] = [0.0] * LENGTHS[2]  # one sample entirely masked (e.g. overlong-filtered)
    with torch.no_grad():
        current = []
        for micro_batch in pad_micro_batches(token_ids, 1):
            current.append(token_logprobs_and_entropy(tiny_qwen3, micro_batch)[0][0])
    old = [(lp + 0.3 * torch.randn(lp.shape, generator=generator)).tolist() for lp in current]
    advantages = torch.randn(len(LENGTHS), generator=generator)
    return token_ids, {"loss_mask": loss_mask, "old_logprobs": old}, advantages


def loss_of(model, micro_batch: MicroBatch, advantages, cfg, counts):
    logprobs, entropy = token_logprobs_and_entropy(model, micro_batch)
    fields = micro_batch.per_token
    per_token = token_advantages(
        advantages[micro_batch.sample_indices], micro_batch.seq_index, fields["loss_mask"]
    )
    return policy_loss(
        logprobs,
        fields["old_logprobs"],
        per_token,
        fields["loss_mask"].bool(),
        micro_batch.seq_index,
        entropy,
        cfg,
        counts,
    )[0]


def accumulated_gradient(model, micro_batches, advantages, cfg, global_counts: bool):
    """Sum of micro-batch gradients; each loss normalised by the global or by its own counts."""
    model.zero_grad()
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    for micro_batch in micro_batches:
        loss = loss_of(model, micro_batch, advantages, cfg, counts if global_counts else None)
        (loss if global_counts else loss / len(micro_batches)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


@pytest.mark.parametrize("mode", AGG_MODES)
def test_accumulated_gradient_does_not_depend_on_the_micro_batch_split(tiny_qwen3, batch, mode):
    token_ids, per_token, advantages = batch
    cfg = AlgorithmConfig(loss_agg=mode, loss_agg_norm_length_tokens=32, dual_clip=3.0)
    gradients = {
        split: accumulated_gradient(
            tiny_qwen3,
            pad_micro_batches(token_ids, per_mb, per_token),
            advantages,
            cfg,
            global_counts=True,
        )
        for split, per_mb in [("1x8", 8), ("2x4", 4), ("8x1", 1)]
    }
    full = gradients["1x8"]
    assert full.abs().max() > 1e-3  # the batch does produce a gradient
    for split in ("2x4", "8x1"):
        assert torch.allclose(gradients[split], full, rtol=1e-4, atol=1e-6), split
    # Averaging per-micro-batch means instead (the usual mistake) gives another gradient.
    naive = accumulated_gradient(
        tiny_qwen3, pad_micro_batches(token_ids, 4, per_token), advantages, cfg, global_counts=False
    )
    assert not torch.allclose(naive, full, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("attention", ["mask_4d", "position_ids"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_packed_and_padded_give_the_same_logprobs_loss_and_gradient(
    build_model, batch, attention, kernel
):
    model = build_model(kernel)
    token_ids, per_token, advantages = batch
    cfg = AlgorithmConfig()
    packed = pack_micro_batches(token_ids, 48, per_token)
    padded = pad_micro_batches(token_ids, 4, per_token)
    assert len(packed) < len(token_ids)  # several sequences share a row

    def per_sequence(micro_batches, **kwargs) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        with torch.no_grad():
            for mb in micro_batches:
                logprobs, entropy = token_logprobs_and_entropy(model, mb, **kwargs)
                for s, sample in enumerate(mb.sample_indices):
                    out[sample] = (logprobs[mb.seq_index == s], entropy[mb.seq_index == s])
        return out

    from_packed = per_sequence(packed, attention=attention)
    from_padded = per_sequence(padded)
    for sample, n in enumerate(LENGTHS):
        assert from_packed[sample][0].shape == (n,)
        assert torch.allclose(from_packed[sample][0], from_padded[sample][0], atol=1e-5)
        assert torch.allclose(from_packed[sample][1], from_padded[sample][1], atol=1e-5)
    gradients, losses = [], []
    for micro_batches in (packed, padded):
        gradients.append(accumulated_gradient(model, micro_batches, advantages, cfg, True))
        with torch.no_grad():
            counts = sum(
                (
                    GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index)
                    for mb in micro_batches
                ),
                GlobalTokenCounts(0, 0, 0),
            )
            losses.append(
                sum(loss_of(model, mb, advantages, cfg, counts).item() for mb in micro_batches)
            )
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


def test_packing_without_the_block_mask_would_leak_across_sequences(tiny_qwen3, batch):
    token_ids = batch[0]
    (row,) = pack_micro_batches(token_ids[:3], 64)
    with torch.no_grad():
        packed, _ = token_logprobs_and_entropy(tiny_qwen3, row)
        # Plain causal attention over the row, positions 0..T-1: what packing must not do.
        leaky = MicroBatch(
            row.input_ids,
            torch.arange(row.input_ids.shape[1])[None],
            row.seq_index,
            row.sample_indices,
            attention_mask=torch.ones_like(row.input_ids),
        )
        leaked, _ = token_logprobs_and_entropy(tiny_qwen3, leaky)
    second = row.seq_index == 1
    assert (packed[second] - leaked[second]).abs().max() > 1e-3


def test_logprobs_are_aligned_with_the_tokens_they_score(tiny_qwen3, make_sequences):
    (ids,) = make_sequences([6], seed=5)
    (row,) = pack_micro_batches([ids], 8)
    with torch.no_grad():
        logits = tiny_qwen3(input_ids=torch.tensor([ids])).logits[0]
        logprobs, entropy = token_logprobs_and_entropy(tiny_qwen3, row, temperature=0.7)
    expected = torch.log_softmax(logits / 0.7, dim=-1)
    assert logprobs[0, 0] == 0 and entropy[0, 0] == 0  # nothing predicts the first token
    for t in range(1, len(ids)):
        assert logprobs[0, t] == pytest.approx(expected[t - 1, ids[t]].item(), abs=1e-5)
        p = expected[t - 1].exp()
        assert entropy[0, t] == pytest.approx(-(p * expected[t - 1]).sum().item(), abs=1e-5)
