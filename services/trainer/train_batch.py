"""Group -> TrainBatch: what the driver does with the scored groups of one optimizer step.

`build_train_batch(groups, policy_version, algorithm, max_staleness)`:

1. Staleness (AReaL, ALGORITHMS.md §5): a sample's staleness is `policy_version` (the version
   being trained on now) minus the OLDEST version among its sampled tokens (interruptible
   rollouts mix versions within one sample; `Trajectory.policy_versions`, -1 on tokens that were
   not sampled). A sample with no sampled token takes its task's `admitted_policy_version`.
   Samples staler than `max_staleness` are dropped and counted (`num_stale_samples`), never
   silently; so are samples whose rollout failed (`Trajectory.error`, `num_error_samples`)
   and samples whose verifier failed (verdict `VERDICT_VERIFIER_ERROR`: timeout, crash,
   sandbox down; `num_verifier_error_samples`): their reward is no score but a placeholder
   (reward/shaping.py), so they are not trained at it, and not counted in the reward curve.
2. Dynamic sampling (DAPO, `algorithm.dynamic_sampling`): a group whose remaining rewards are
   all equal, or that has fewer than two samples left, carries no signal and is dropped
   (`advantages.filter_zero_signal_groups`); `kept_group_ratio` is reported.
3. Advantages over the kept groups (`algorithm.advantage`): GRPO and RLOO give one value per
   sample (`advantages.compute_advantages`), broadcast to the sample's loss-mask tokens when
   micro-batches are built, or with `algorithm.arpo_attribution: hard` spread over the ARPO
   sampling tree (`advantages.arpo_hard_advantages`: a token shared by several branches gets
   their mean advantage; the tree comes from `Trajectory.parent_trajectory_id`/`branch_point`,
   a dropped sample's children hang from its nearest kept ancestor). REINFORCE++ and
   REINFORCE++-baseline give one value per token (`advantages.reinforce_pp_token_advantages`).

`TrainBatch.micro_batches(token_budget)` packs the samples (packing.py) with the per-token
fields the loss reads: `loss_mask`, `behaviour_logprobs` (what vLLM reported when sampling),
`old_logprobs` (= behaviour log-probs; decoupled PPO replaces them by π_prox, see rl_step.py)
and `advantages`. vLLM's log-probs are `raw_logprobs` (before temperature), so the trainer
recomputes at temperature 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from agentrl.common.config import AlgorithmConfig
from agentrl.trainer.advantages import (
    TOKEN_ESTIMATORS,
    arpo_hard_advantages,
    compute_advantages,
    filter_zero_signal_groups,
    reinforce_pp_token_advantages,
)
from agentrl.trainer.packing import MicroBatch, pack_micro_batches

# Verdicts of group.proto: a correct answer (accuracy counts it), and a verifier that could not
# finish (timeout, crash): such a sample has no reward and is dropped.
VERDICT_CORRECT = 1
VERDICT_VERIFIER_ERROR = 6


@dataclass(frozen=True)
class TrainSample:
    """One trajectory as the loss sees it."""

    token_ids: list[int]
    loss_mask: list[int]
    behaviour_logprobs: list[float]
    reward: float
    advantage: float
    """The sample's advantage (per-token estimators: the mean over its loss tokens)."""
    staleness: int
    response_length: int
    """Tokens after the prompt (model output and tool output)."""
    num_tool_calls: int
    correct: bool
    token_advantages: list[float] | None = None
    """Per-token advantages (0 off the loss mask) when the estimator or ARPO hard attribution
    gives them; None: `advantage` on every loss token."""


@dataclass
class TrainBatch:
    """The kept samples of one step and the counts behind the step metrics."""

    samples: list[TrainSample]
    num_groups: int
    num_kept_groups: int
    num_stale_samples: int
    num_error_samples: int
    num_verifier_error_samples: int = 0
    rewards_seen: list[float] = field(default_factory=list)
    """Rewards of every non-stale sample whose rollout and verifier ran, kept group or not
    (the reward curve)."""
    correct_seen: list[bool] = field(default_factory=list)

    @property
    def kept_group_ratio(self) -> float:
        return self.num_kept_groups / self.num_groups if self.num_groups else 0.0

    def staleness_histogram(self) -> dict[int, int]:
        return dict(sorted(Counter(s.staleness for s in self.samples).items()))

    def micro_batches(self, token_budget: int) -> list[MicroBatch]:
        """Packed micro-batches of at most `token_budget` tokens with the loss's fields."""
        if not self.samples:
            raise ValueError("the batch has no samples to train on")
        per_token = {
            "loss_mask": [s.loss_mask for s in self.samples],
            "behaviour_logprobs": [
                [lp if m else 0.0 for lp, m in zip(s.behaviour_logprobs, s.loss_mask)]
                for s in self.samples
            ],
            "advantages": [
                s.token_advantages
                if s.token_advantages is not None
                else [s.advantage * m for m in s.loss_mask]
                for s in self.samples
            ],
        }
        per_token["old_logprobs"] = per_token["behaviour_logprobs"]
        return pack_micro_batches([s.token_ids for s in self.samples], token_budget, per_token)


def sample_staleness(trajectory, admitted_version: int, policy_version: int) -> int:
    """`policy_version` minus the oldest version among the trajectory's sampled tokens."""
    sampled = [v for v, m in zip(trajectory.policy_versions, trajectory.loss_mask) if m and v >= 0]
    oldest = min(sampled) if sampled else admitted_version
    return policy_version - oldest


def _check_trajectory(trajectory, where: str) -> None:
    n = len(trajectory.token_ids)
    lengths = {
        "loss_mask": len(trajectory.loss_mask),
        "behaviour_logprobs": len(trajectory.behaviour_logprobs),
        "policy_versions": len(trajectory.policy_versions),
    }
    wrong = {name: size for name, size in lengths.items() if size != n}
    if wrong:
        raise ValueError(
            f"{where}: {n} token ids but per-token fields of lengths {wrong}; the "
            "rollout must send one value per token"
        )


def build_train_batch(
    groups, policy_version: int, algorithm: AlgorithmConfig, max_staleness: int
) -> TrainBatch:
    """Filter, score and flatten `groups` (core.v1 `Group` messages) into a TrainBatch."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    num_stale = num_error = num_verifier_error = 0
    rewards_seen: list[float] = []
    correct_seen: list[bool] = []
    candidates = []  # per group: the usable (trajectory, result, staleness) triples
    for group in groups:
        usable = []
        for index, scored in enumerate(group.samples):
            trajectory = scored.trajectory
            _check_trajectory(trajectory, f"group {group.group_id} sample {index}")
            if trajectory.error:
                num_error += 1
                continue
            if scored.result.verdict == VERDICT_VERIFIER_ERROR:
                num_verifier_error += 1
                continue
            staleness = sample_staleness(
                trajectory, group.task.admitted_policy_version, policy_version
            )
            if staleness > max_staleness:
                num_stale += 1
                continue
            usable.append((trajectory, scored.result, staleness))
            rewards_seen.append(scored.result.reward)
            correct_seen.append(scored.result.verdict == VERDICT_CORRECT)
        candidates.append(usable)

    rewards = [
        torch.tensor([r.reward for _, r, _ in usable], dtype=torch.float64) for usable in candidates
    ]
    if algorithm.dynamic_sampling:
        kept = filter_zero_signal_groups(rewards).kept_indices
    else:
        kept = [i for i, usable in enumerate(candidates) if usable]
    per_token = _kept_advantages(groups, candidates, rewards, kept, algorithm)
    samples = []
    for group_index, group_advantages in zip(kept, per_token, strict=True):
        for (trajectory, result, staleness), values in zip(
            candidates[group_index], group_advantages, strict=True
        ):
            if isinstance(values, float):
                advantage, token_values = values, None
            else:
                mask = torch.tensor(list(trajectory.loss_mask), dtype=torch.bool)
                advantage = float(values[mask].mean()) if bool(mask.any()) else 0.0
                token_values = torch.where(mask, values, torch.zeros_like(values)).tolist()
            samples.append(
                TrainSample(
                    token_ids=list(trajectory.token_ids),
                    loss_mask=list(trajectory.loss_mask),
                    behaviour_logprobs=list(trajectory.behaviour_logprobs),
                    reward=result.reward,
                    advantage=advantage,
                    staleness=staleness,
                    response_length=len(trajectory.token_ids) - trajectory.prompt_length,
                    num_tool_calls=trajectory.num_tool_calls,
                    correct=result.verdict == VERDICT_CORRECT,
                    token_advantages=token_values,
                )
            )
    return TrainBatch(
        samples=samples,
        num_groups=len(candidates),
        num_kept_groups=len(kept),
        num_stale_samples=num_stale,
        num_error_samples=num_error,
        num_verifier_error_samples=num_verifier_error,
        rewards_seen=rewards_seen,
        correct_seen=correct_seen,
    )


def _kept_advantages(groups, candidates, rewards, kept, algorithm) -> list[list]:
    """Per kept group, per usable sample: a float (one advantage) or a per-token tensor."""
    if not kept:
        return []
    if algorithm.advantage in TOKEN_ESTIMATORS:
        return reinforce_pp_token_advantages(
            [rewards[i] for i in kept],
            [[t.loss_mask for t, _, _ in candidates[i]] for i in kept],
            baseline=algorithm.advantage == "reinforce_pp_baseline",
            gamma=algorithm.gamma,
        )
    per_sample = compute_advantages(
        [rewards[i] for i in kept], algorithm.advantage, algorithm.grpo_std_normalize
    )
    if algorithm.arpo_attribution != "hard":
        return [values.tolist() for values in per_sample]
    return [
        _hard_attribution(groups[i], candidates[i], values)
        for i, values in zip(kept, per_sample, strict=True)
    ]


def _hard_attribution(group, usable, sample_advantages: torch.Tensor) -> list[torch.Tensor]:
    """ARPO hard attribution over the kept samples of one group's sampling tree."""
    tree = {
        s.trajectory.trajectory_id: (s.trajectory.parent_trajectory_id, s.trajectory.branch_point)
        for s in group.samples
    }
    position = {t.trajectory_id: k for k, (t, _, _) in enumerate(usable)}
    parents: list[int | None] = []
    branch_points: list[int] = []
    for trajectory, _, _ in usable:
        # Climb past dropped ancestors: the shared prefix is the smallest branch point on the way.
        parent, shared = trajectory.parent_trajectory_id, trajectory.branch_point
        seen = {trajectory.trajectory_id}
        while parent and parent not in position and parent in tree and parent not in seen:
            seen.add(parent)
            parent, point = tree[parent]
            shared = min(shared, point) if parent else shared
        parents.append(position.get(parent) if parent else None)
        branch_points.append(shared if parents[-1] is not None else 0)
    return arpo_hard_advantages(
        sample_advantages,
        parents,
        branch_points,
        [len(t.token_ids) for t, _, _ in usable],
    )
