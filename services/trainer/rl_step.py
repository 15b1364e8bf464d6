"""The RL driver's core, free of Redis and vLLM: admission under the staleness bound, one
optimizer step on a TrainBatch, and the step's metrics.

Admission (AReaL, ALGORITHMS.md §5), counted in prompts (= groups):

    admit while  accepted + running < (max_staleness + version + 1) · batch_size

`accepted`: groups that entered training (kept after filtering); `running`: prompts admitted
whose group has not come back. A group that comes back and is dropped (zero signal, all samples
stale) stops running without being accepted, so its slot is admitted again: dynamic sampling
refills the batch by itself. With max_staleness 0 the trainer admits exactly one batch per
version (synchronous RL); with η it runs at most η versions ahead.

One step (`train_step`):
1. micro-batches from the TrainBatch (train_batch.py), at most `micro_batch_tokens` each; under
   data parallelism every rank holds the whole batch, packs the same micro-batches and trains
   on its share (distributed.rank_share: micro-batches r, r + W, ...);
2. decoupled PPO only: π_prox = the current weights' log-probs (no grad) become `old_logprobs`,
   the behaviour log-probs stay as `behaviour_logprobs`; otherwise old = behaviour; with a
   reference policy (reference.py: `kl_coef > 0` or `log_reference_kl`), its log-probs become
   `ref_logprobs` (the KL penalty and the `kl_k1/k2/k3` metrics);
3. the step's global token counts (summed over this rank's micro-batches, all-reduced over
   ranks), then `backend.train_step` with `loss.policy_loss_fn` (gradient accumulation, one
   AdamW step; its metrics come back summed over ranks).

`step_metrics` turns a step into the flat dict written per step (metrics.py): reward mean and
std, accuracy, entropy, clip fractions, approx KL, the KL to the reference (`kl_k1/k2/k3`,
`kl_loss`, only with a reference), grad norm, response length, tool calls,
kept-group ratio, dropped counts, staleness histogram (`staleness_<k>` sample counts) and the
time split `time_waiting_s` / `time_training_s` / `time_weight_sync_s`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any

from agentrl.common.config import AlgorithmConfig
from agentrl.trainer.backends.interface import StepStats, TrainerBackend
from agentrl.trainer.distributed import rank_share
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss_fn
from agentrl.trainer.reference import ReferencePolicy
from agentrl.trainer.train_batch import TrainBatch

# vLLM reports raw log-probs (before temperature, docs/rollout.md): recompute at temperature 1.
LOGPROB_TEMPERATURE = 1.0


@dataclass
class AdmissionControl:
    """AReaL's staleness bound over prompt counts; `state_dict` goes into the checkpoint."""

    batch_size: int
    max_staleness: int
    admitted: int = 0
    """Prompts admitted so far."""
    returned: int = 0
    """Groups that came back (kept or dropped)."""
    accepted: int = 0
    """Groups that came back and entered training."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"trainer.batch_size must be > 0, got {self.batch_size}")
        if self.max_staleness < 0:
            raise ValueError(f"trainer.max_staleness must be >= 0, got {self.max_staleness}")

    @property
    def running(self) -> int:
        return self.admitted - self.returned

    def capacity(self, version: int) -> int:
        """How many more prompts may be admitted now, at policy `version`."""
        bound = (self.max_staleness + version + 1) * self.batch_size
        return max(0, bound - self.accepted - self.running)

    def can_admit(self, version: int) -> bool:
        return self.accepted + self.running < (self.max_staleness + version + 1) * self.batch_size

    def on_admitted(self, count: int = 1) -> None:
        self.admitted += count

    def on_returned(self, num_groups: int, num_kept: int) -> None:
        if num_kept > num_groups or num_groups > self.running:
            raise ValueError(
                f"{num_groups} groups returned ({num_kept} kept) but only "
                f"{self.running} prompts are running"
            )
        self.returned += num_groups
        self.accepted += num_kept

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in ("admitted", "returned", "accepted"):
            setattr(self, name, int(state[name]))


@dataclass(frozen=True)
class StepOutcome:
    """What `train_step` did: the loss's summed metrics, the optimizer step, the counts."""

    loss_metrics: dict[str, float]
    stats: StepStats
    counts: GlobalTokenCounts
    num_micro_batches: int
    """Micro-batches of the global batch (all ranks together)."""
    time_training_s: float
    time_reference_s: float = 0.0
    """Of `time_training_s`: the reference policy's forward (0 without a reference)."""


def train_step(
    backend: TrainerBackend,
    batch: TrainBatch,
    algorithm: AlgorithmConfig,
    micro_batch_tokens: int,
    reference: ReferencePolicy | None = None,
) -> StepOutcome:
    """One optimizer step on `batch` (see the module docstring)."""
    if algorithm.kl_coef > 0 and reference is None:
        raise ValueError("kl_coef > 0 needs the reference policy (ReferencePolicy.for_run)")
    start = time.perf_counter()
    all_micro_batches = batch.micro_batches(micro_batch_tokens)
    micro_batches = rank_share(all_micro_batches)
    if algorithm.decoupled_ppo:
        proximal = backend.logprobs(micro_batches, LOGPROB_TEMPERATURE)
        for micro_batch, (logprobs, _entropy) in zip(micro_batches, proximal, strict=True):
            mask = micro_batch.per_token["loss_mask"].bool()
            micro_batch.per_token["old_logprobs"] = logprobs.where(mask, 0.0)
    if reference is not None:
        reference.annotate(micro_batches)
    local = GlobalTokenCounts(0, 0, 0)
    for micro_batch in micro_batches:
        local = local + GlobalTokenCounts.of(
            micro_batch.per_token["loss_mask"], micro_batch.seq_index
        )
    counts = backend.global_counts(local)
    if counts.num_loss_tokens == 0:
        raise ValueError("the batch has no loss tokens (every loss mask is 0); nothing to train")
    loss_metrics, stats = backend.train_step(
        micro_batches, policy_loss_fn(algorithm, counts), LOGPROB_TEMPERATURE
    )
    return StepOutcome(
        loss_metrics=loss_metrics,
        stats=stats,
        counts=counts,
        num_micro_batches=len(all_micro_batches),
        time_training_s=time.perf_counter() - start,
        time_reference_s=reference.time_s if reference is not None else 0.0,
    )


def _mean(values) -> float:
    values = list(values)
    return float(statistics.fmean(values)) if values else 0.0


def step_metrics(
    batch: TrainBatch,
    outcome: StepOutcome,
    *,
    time_waiting_s: float = 0.0,
    time_weight_sync_s: float = 0.0,
) -> dict[str, Any]:
    """The flat per-step record (numbers only, so each one is also a Prometheus gauge)."""
    samples = batch.samples
    rewards = batch.rewards_seen
    metrics: dict[str, Any] = {
        "reward_mean": _mean(rewards),
        "reward_std": float(statistics.pstdev(rewards)) if len(rewards) > 1 else 0.0,
        "reward_min": min(rewards, default=0.0),
        "reward_max": max(rewards, default=0.0),
        "accuracy": _mean(float(c) for c in batch.correct_seen),
        "train_reward_mean": _mean(s.reward for s in samples),
        "grad_norm": outcome.stats.grad_norm,
        "learning_rate": outcome.stats.learning_rate,
        "response_length_mean": _mean(s.response_length for s in samples),
        "response_length_max": max((s.response_length for s in samples), default=0),
        "tool_calls_mean": _mean(s.num_tool_calls for s in samples),
        "num_samples": len(samples),
        "num_loss_tokens": outcome.counts.num_loss_tokens,
        "num_micro_batches": outcome.num_micro_batches,
        "num_groups": batch.num_groups,
        "kept_group_ratio": batch.kept_group_ratio,
        "samples_dropped_stale": batch.num_stale_samples,
        "samples_dropped_error": batch.num_error_samples,
        "samples_dropped_verifier_error": batch.num_verifier_error_samples,
        "staleness_mean": _mean(s.staleness for s in samples),
        "time_waiting_s": time_waiting_s,
        "time_training_s": outcome.time_training_s,
        "time_reference_s": outcome.time_reference_s,
        "time_weight_sync_s": time_weight_sync_s,
        "time_step_s": time_waiting_s + outcome.time_training_s + time_weight_sync_s,
    }
    metrics.update({f"staleness_{k}": v for k, v in batch.staleness_histogram().items()})
    # entropy, approx_kl, clip_frac_low/high, dual_clip_frac, pg_loss, loss, ... from the loss.
    metrics.update({name: float(value) for name, value in outcome.loss_metrics.items()})
    return metrics
