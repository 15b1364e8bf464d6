"""The deterministic RL batch and step of the Megatron rank tests (test_megatron_ranks.py,
test_megatron_pipeline.py): imported by the test process and by the torchrun ranks running
those files as scripts (this folder is on sys.path in both: tests/unit/trainer/conftest.py, and
a script's own folder)."""

from __future__ import annotations

import torch

LENGTHS = [12, 30, 7, 21, 16, 9, 25, 11]
TOKEN_BUDGET = 40
LEARNING_RATE = 1e-2


def micro_batches_and_loss(vocab_size: int):
    """Deterministic packed micro-batches with RL fields, and the algorithm of the step."""
    from agentrl.common.config import AlgorithmConfig
    from agentrl.trainer.packing import pack_micro_batches

    generator = torch.Generator().manual_seed(0)
    token_ids = [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in LENGTHS]
    per_token = {
        "loss_mask": [[0.0] * 3 + [1.0] * (n - 3) for n in LENGTHS],
        "advantages": [
            [float(a)] * n for a, n in zip(torch.randn(len(LENGTHS), generator=generator), LENGTHS)
        ],
        "old_logprobs": [(-2.0 - torch.rand(n, generator=generator)).tolist() for n in LENGTHS],
    }
    return pack_micro_batches(token_ids, TOKEN_BUDGET, per_token), AlgorithmConfig(
        learning_rate=LEARNING_RATE, entropy_coef=0.01
    )


def one_step(backend) -> dict:
    """What rl_step.train_step does with a backend: rank share, global counts, the step; the
    log-probs per micro-batch, metrics, grad norm and new weights."""
    from agentrl.trainer.distributed import rank_share
    from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn

    all_micro_batches, algorithm = micro_batches_and_loss(backend.shape.vocab_size)
    share = rank_share(all_micro_batches)
    logprobs = backend.logprobs(share)
    local = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in share),
        GlobalTokenCounts(0, 0, 0),
    )
    counts = backend.global_counts(local)
    metrics, stats = backend.train_step(share, policy_loss_fn(algorithm, counts))
    return {
        "logprobs": {tuple(mb.sample_indices): lp for mb, (lp, _) in zip(share, logprobs)},
        "metrics": metrics,
        "grad_norm": stats.grad_norm,
        "weights": backend.hf_weights(),
    }
