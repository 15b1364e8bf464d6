"""The policy loss of ALGORITHMS.md §1: one function, every knob a field of `AlgorithmConfig`.

Per token t of sequence i, with advantage A, ratio r = π_θ / π_old and mask m (1 on model tokens):

    pg_t = max(-r·A, -clip(r, 1 - ε_low, 1 + ε_high)·A)       clip-higher (DAPO)
    pg_t = min(pg_t, -c·A)            if A < 0 and dual_clip c   (cap the loss at c·|A|)

- GSPO (`gspo`): r is replaced by the sequence ratio s_i = exp(mean_t log r_t) (mean over the
  sequence's masked tokens), written per token as `sg(s_i) · π_θ(t) / sg(π_θ(t))` so its value
  is s_i and its gradient is s_i·∇log π_θ(t); with `seq-mean-token-mean` this is exactly the
  sequence-level GSPO objective.
- Decoupled PPO (`decoupled_ppo`, AReaL): `old_logprobs` is π_prox (weights before this
  update), r = π_θ / π_prox, and pg_t is multiplied by the behaviour weight w = π_prox / π_behav
  (`behaviour_logprobs`: the policy version that sampled the token). Weights above
  `behaviour_weight_cap` are clamped to it or the token is masked (w = 0); a masked token still
  counts in the normalisers below, as in AReaL. With π_prox = π_behav, w = 1: plain PPO.
- KL to a reference (`ref_logprobs`, reference.py), x = log π_θ - log π_ref, verl's
  conventions: k1 = x and k2 = x²/2 unclamped; k3 = e^d - d - 1 with d = -x clamped to ±20 and
  the result clamped to ±10. All three are logged whenever reference log-probs are given; the
  chosen one (`kl_estimator`) enters the loss times `kl_coef`.
- Entropy: always logged; `entropy_coef` > 0 subtracts it as a bonus.

    loss = agg(pg) + kl_coef·agg(kl) - entropy_coef·agg(entropy)

Aggregation over the GLOBAL batch (every micro-batch and data-parallel rank of one optimizer
step), so that summing the gradients of micro-batches gives exactly the full-batch gradient:

    token-mean               Σ_tokens m·x / N_tokens
    seq-mean-token-sum       Σ_seqs (Σ_t m·x) / N_seqs
    seq-mean-token-mean      Σ_seqs (Σ_t m·x / n_i) / N_seqs
    seq-mean-token-sum-norm  Σ_seqs (Σ_t m·x / L) / N_seqs        L constant (Dr. GRPO)

N_tokens (masked tokens) and N_seqs (sequences with at least one masked token) come from
`GlobalTokenCounts`, summed over micro-batches and all-reduced over ranks before the step.
Metrics are this micro-batch's share of the global mean: sum them over micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.common.config import AlgorithmConfig

# log-ratios are clamped here before exp: exp(20) ≈ 5e8 already saturates every clip, and
# larger values overflow bf16/fp32 when a token's probability collapsed between policies.
LOG_RATIO_LIMIT = 20.0
# verl's bound on the k3 estimate: one token whose reference probability collapsed cannot
# dominate the penalty (its gradient is 0 past the bound).
K3_LIMIT = 10.0


@dataclass(frozen=True)
class GlobalTokenCounts:
    """Normalisers of one optimizer step, over all its micro-batches and ranks."""

    num_loss_tokens: int
    """Tokens with loss mask 1 (token-mean's denominator)."""
    num_sequences: int
    """Sequences with at least one loss token (the seq-mean modes' denominator)."""
    num_tokens: int
    """All tokens of the sequences, padding excluded (for the masked-token ratio)."""

    @classmethod
    def of(cls, loss_mask: torch.Tensor, seq_index: torch.Tensor) -> GlobalTokenCounts:
        """Counts of one micro-batch (`seq_index` is -1 on padding)."""
        mask = loss_mask.bool() & (seq_index >= 0)
        live = torch.unique(seq_index[mask])
        return cls(int(mask.sum()), int(live.numel()), int((seq_index >= 0).sum()))

    def __add__(self, other: GlobalTokenCounts) -> GlobalTokenCounts:
        return GlobalTokenCounts(
            self.num_loss_tokens + other.num_loss_tokens,
            self.num_sequences + other.num_sequences,
            self.num_tokens + other.num_tokens,
        )


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token estimators of KL(π_θ || π_ref) on tokens sampled from (about) π_θ, with verl's
    clamps: k1 = x, k2 = x²/2 (x = log π_θ - log π_ref, unclamped); k3 = e^d - d - 1 with
    d = -x clamped to ±LOG_RATIO_LIMIT and the result to ±K3_LIMIT."""
    x = logprobs - ref_logprobs
    d = (-x).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    k3 = (torch.expm1(d) - d).clamp(-K3_LIMIT, K3_LIMIT)
    return {"k1": x, "k2": 0.5 * x.square(), "k3": k3}


def _num_local_sequences(seq_index: torch.Tensor) -> int:
    """Slots for per-sequence sums: one per sequence index (at least one, for all-padding)."""
    return int(seq_index.max().clamp(min=0)) + 1 if seq_index.numel() else 1


def aggregate(
    values: torch.Tensor,
    loss_mask: torch.Tensor,
    seq_index: torch.Tensor,
    mode: str,
    counts: GlobalTokenCounts,
    norm_length_tokens: int | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the global aggregate of per-token `values` (see module doc)."""
    loss_mask = loss_mask.bool()
    masked = torch.where(loss_mask, values, torch.zeros_like(values))
    if mode == "token-mean":
        return masked.sum() / max(counts.num_loss_tokens, 1)
    num_local_seqs = _num_local_sequences(seq_index)
    index = seq_index.clamp(min=0).flatten()
    seq_sum = masked.new_zeros(num_local_seqs).index_add(0, index, masked.flatten())
    if mode == "seq-mean-token-sum":
        per_seq = seq_sum
    elif mode == "seq-mean-token-mean":
        seq_tokens = masked.new_zeros(num_local_seqs).index_add(
            0, index, loss_mask.flatten().to(masked.dtype)
        )
        per_seq = seq_sum / seq_tokens.clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        if not norm_length_tokens:
            raise ValueError("seq-mean-token-sum-norm needs loss_agg_norm_length_tokens")
        per_seq = seq_sum / norm_length_tokens
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}")
    return per_seq.sum() / max(counts.num_sequences, 1)


def _sequence_log_ratio(log_ratio, logprobs, loss_mask, seq_index) -> torch.Tensor:
    """GSPO per-token log-ratio: value mean_t log r_t of the sequence, gradient ∇log π_θ(t)."""
    num_local_seqs = _num_local_sequences(seq_index)
    index = seq_index.clamp(min=0).flatten()
    masked = torch.where(loss_mask, log_ratio, torch.zeros_like(log_ratio)).flatten()
    seq_sum = masked.new_zeros(num_local_seqs).index_add(0, index, masked.detach())
    seq_tokens = masked.new_zeros(num_local_seqs).index_add(
        0, index, loss_mask.flatten().to(masked.dtype)
    )
    seq_mean = (seq_sum / seq_tokens.clamp(min=1))[index].view_as(log_ratio)
    return seq_mean + logprobs - logprobs.detach()


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    seq_index: torch.Tensor,
    entropy: torch.Tensor,
    config: AlgorithmConfig,
    counts: GlobalTokenCounts | None = None,
    *,
    behaviour_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one micro-batch and its metrics (0-dim detached tensors), ALGORITHMS.md §1.

    All tensors share one layout (packed [1, T] or padded [B, L]), aligned with the input ids:
    `logprobs` (π_θ, with grad) and `entropy` from the model, `old_logprobs` (π_old, or π_prox
    when decoupled), per-token `advantages`, `loss_mask`, and `seq_index` (the sequence of each
    token in this micro-batch, -1 on padding). `counts=None` means this micro-batch is the
    whole global batch.
    """
    shapes = {
        name: tuple(t.shape)
        for name, t in [
            ("logprobs", logprobs),
            ("old_logprobs", old_logprobs),
            ("advantages", advantages),
            ("loss_mask", loss_mask),
            ("seq_index", seq_index),
            ("entropy", entropy),
            ("behaviour_logprobs", behaviour_logprobs),
            ("ref_logprobs", ref_logprobs),
        ]
        if t is not None
    }
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all per-token tensors need one shape, got {shapes}")
    if config.decoupled_ppo and behaviour_logprobs is None:
        raise ValueError("decoupled_ppo needs behaviour_logprobs (π_behav of each token)")
    if config.kl_coef > 0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs from the reference policy")
    mask = loss_mask.bool() & (seq_index >= 0)
    if counts is None:
        counts = GlobalTokenCounts.of(loss_mask, seq_index)
    zeros = torch.zeros_like(logprobs)

    def agg(values: torch.Tensor) -> torch.Tensor:
        return aggregate(
            values, mask, seq_index, config.loss_agg, counts, config.loss_agg_norm_length_tokens
        )

    def token_share(values: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the global mean over loss tokens (a metric)."""
        return torch.where(mask, values, zeros).sum().detach() / max(counts.num_loss_tokens, 1)

    # Masked positions may hold anything (0 for prompts, -inf or NaN from a sampler): keep
    # them out of exp() and of the GSPO sequence means.
    log_ratio = torch.where(mask, logprobs - old_logprobs, zeros)
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    if config.gspo:
        log_ratio = _sequence_log_ratio(log_ratio, logprobs, mask, seq_index)
    ratio = torch.exp(log_ratio)
    lower, upper = 1.0 - config.clip_low, 1.0 + config.clip_high
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(lower, upper)
    pg = torch.maximum(unclipped, clipped)
    negative = advantages < 0
    clipped_low = mask & negative & (ratio < lower)
    clipped_high = mask & (advantages > 0) & (ratio > upper)
    dual_clipped = torch.zeros_like(mask)
    if config.dual_clip is not None:
        dual_cap = -config.dual_clip * advantages  # c·|A| where A < 0
        dual_clipped = mask & negative & (pg > dual_cap)
        pg = torch.where(negative, torch.minimum(pg, dual_cap), pg)

    cap_hits = torch.zeros((), dtype=torch.long)
    if config.decoupled_ppo:
        behaviour_log_weight = torch.where(mask, old_logprobs - behaviour_logprobs, zeros)
        weight = torch.exp(behaviour_log_weight.clamp(max=LOG_RATIO_LIMIT)).detach()
        over_cap = mask & (weight > config.behaviour_weight_cap)
        cap_hits = over_cap.sum()
        if config.behaviour_weight_cap_mode == "clamp":
            weight = weight.clamp(max=config.behaviour_weight_cap)
        else:
            weight = torch.where(over_cap, zeros, weight)
        pg = pg * weight

    pg_loss = agg(pg)
    loss = pg_loss
    metrics: dict[str, torch.Tensor] = {}
    if ref_logprobs is not None:
        # Off the mask the reference may hold anything: compare the policy with itself there.
        estimates = kl_estimates(logprobs, torch.where(mask, ref_logprobs, logprobs.detach()))
        kl_loss = agg(estimates[config.kl_estimator])
        if config.kl_coef > 0:
            loss = loss + config.kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss.detach()
        metrics.update({f"kl_{name}": token_share(value) for name, value in estimates.items()})
    entropy_agg = agg(entropy)
    if config.entropy_coef > 0:
        loss = loss - config.entropy_coef * entropy_agg

    # approx KL(π_old || π_θ) with k3 on the ratio actually used (sequence ratio under GSPO).
    approx_kl = ratio - 1 - log_ratio
    num_tokens = max(counts.num_tokens, 1)
    metrics.update(
        {
            "loss": loss.detach(),
            "pg_loss": pg_loss.detach(),
            "entropy": token_share(entropy),
            "approx_kl": token_share(approx_kl),
            "clip_frac_low": token_share(clipped_low.to(ratio.dtype)),
            "clip_frac_high": token_share(clipped_high.to(ratio.dtype)),
            "dual_clip_frac": token_share(dual_clipped.to(ratio.dtype)),
            "masked_token_ratio": ((seq_index >= 0) & ~mask).sum() / num_tokens,
            "behaviour_cap_hits": cap_hits,
        }
    )
    return loss, metrics


def policy_loss_fn(config: AlgorithmConfig, counts: GlobalTokenCounts):
    """A backend `LossFn` (agentrl.trainer.backends.interface) applying `policy_loss` to a micro-batch.

    The micro-batch's per-token fields: `loss_mask`, `old_logprobs`, `advantages`, and when
    used `behaviour_logprobs` (decoupled PPO) and `ref_logprobs` (KL). `counts` are the global
    counts of the optimizer step (backend.global_counts of the summed micro-batch counts).
    """

    def loss_fn(logprobs: torch.Tensor, entropy: torch.Tensor, micro_batch):
        fields = micro_batch.per_token
        return policy_loss(
            logprobs,
            fields["old_logprobs"],
            fields["advantages"],
            fields["loss_mask"].bool(),
            micro_batch.seq_index,
            entropy,
            config,
            counts,
            behaviour_logprobs=fields.get("behaviour_logprobs"),
            ref_logprobs=fields.get("ref_logprobs"),
        )

    return loss_fn
