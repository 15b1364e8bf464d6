"""Advantages from outcome rewards (ALGORITHMS.md §2), and how they reach the model's tokens.

Every estimator maps the rewards of one batch, given as one 1-D tensor per group (the samples
of one prompt), to one advantage per sample:

- GRPO: `A_i = (R_i - mean(R)) / (std(R) + 1e-6)`, or `R_i - mean(R)` without the division
  (Dr. GRPO). `std` is the **sample** standard deviation (Bessel's correction, divide by G - 1),
  as in verl and TRL, so advantages match the published recipes (Open-AgentRL is built on verl).
- RLOO: `A_i = R_i - mean_{j != i} R_j`, i.e. `G / (G - 1) * (R_i - mean(R))`.
- REINFORCE++ with baseline: subtract the group mean, then divide by the sample std of those
  centred rewards over the whole batch (one std per batch, not per group). verl whitens per
  token instead (long responses weigh more); here every sample counts once.

A group of one sample has no baseline: its advantage is 0 under every estimator (dynamic
sampling drops such groups anyway). A group whose rewards are all equal gets advantages 0.

Then:
- `filter_zero_signal_groups`: DAPO dynamic sampling's filter (keep groups whose rewards differ);
- `token_advantages`: broadcast one advantage per sample to its model tokens via the loss mask;
- `arpo_hard_advantages`: ARPO's hard attribution on a sampling tree (tokens shared by several
  branches get the mean advantage of those branches).

Rewards are computed in float64: they arrive as protobuf doubles and groups are small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Estimator = Literal["grpo", "rloo", "reinforce_pp"]
ESTIMATORS: tuple[str, ...] = ("grpo", "rloo", "reinforce_pp")
# Added to the std before dividing, so a near-constant group cannot blow advantages up (GRPO).
STD_EPS = 1e-6
# Rewards closer than this count as equal for dynamic sampling: shaping terms are multiples of
# 1/L_buf or 0.1, far above it, while float noise from rescaling stays far below it.
ZERO_SIGNAL_TOLERANCE = 1e-9


def _sample_std(values: torch.Tensor) -> torch.Tensor:
    """Sample std (divide by n - 1); 0 for fewer than two values instead of NaN."""
    if values.numel() < 2:
        return torch.zeros((), dtype=values.dtype)
    return values.std(correction=1)


def grpo_advantages(rewards: torch.Tensor, std_normalize: bool = True) -> torch.Tensor:
    """GRPO advantages of one group; `std_normalize=False` is Dr. GRPO."""
    rewards = rewards.to(torch.float64)
    centred = rewards - rewards.mean()
    if not std_normalize:
        return centred
    return centred / (_sample_std(rewards) + STD_EPS)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages of one group: each reward minus the mean of the others."""
    rewards = rewards.to(torch.float64)
    num_samples = rewards.numel()
    if num_samples < 2:
        return torch.zeros_like(rewards)
    leave_one_out_mean = (rewards.sum() - rewards) / (num_samples - 1)
    return rewards - leave_one_out_mean


def reinforce_pp_advantages(groups: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """REINFORCE++ baseline: group mean subtracted, then divided by the batch std."""
    centred = [g.to(torch.float64) - g.to(torch.float64).mean() for g in groups]
    # A 1-sample group is centred to exactly 0: it has no baseline and must not move the std.
    informative = [c for c in centred if c.numel() >= 2]
    batch_std = _sample_std(torch.cat(informative)) if informative else torch.zeros(())
    return [c / (batch_std + STD_EPS) for c in centred]


def compute_advantages(
    groups: Sequence[torch.Tensor], estimator: str, std_normalize: bool = True
) -> list[torch.Tensor]:
    """One advantage per sample for each group of rewards (`AlgorithmConfig.advantage`)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; use one of {ESTIMATORS}")
    for index, group in enumerate(groups):
        if group.dim() != 1 or group.numel() == 0:
            raise ValueError(
                f"group {index}: rewards must be a non-empty 1-D tensor, "
                f"got shape {tuple(group.shape)}"
            )
    if estimator == "grpo":
        return [grpo_advantages(g, std_normalize) for g in groups]
    if estimator == "rloo":
        return [rloo_advantages(g) for g in groups]
    return reinforce_pp_advantages(groups)


@dataclass(frozen=True)
class DynamicSamplingResult:
    """Which groups carry a learning signal, and the kept ratio to report per step."""

    kept_indices: list[int]
    num_groups: int

    @property
    def num_kept(self) -> int:
        return len(self.kept_indices)

    @property
    def kept_ratio(self) -> float:
        return self.num_kept / self.num_groups if self.num_groups else 0.0


def filter_zero_signal_groups(groups: Sequence[torch.Tensor]) -> DynamicSamplingResult:
    """DAPO dynamic sampling: drop groups whose rewards are all equal (a 1-sample group too).

    Such a group has advantage 0 for every sample under every estimator, so it adds no gradient
    but still dilutes token-mean; the driver keeps sampling until the batch is full.
    """
    kept = [
        index
        for index, rewards in enumerate(groups)
        if rewards.numel() >= 2 and float(rewards.max() - rewards.min()) > ZERO_SIGNAL_TOLERANCE
    ]
    return DynamicSamplingResult(kept_indices=kept, num_groups=len(groups))


def token_advantages(
    sample_advantages: torch.Tensor, seq_index: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Per-token advantages: each token gets its sequence's advantage where `loss_mask` is set.

    `seq_index` gives, for every token of a packed or padded micro-batch, the position of its
    sequence in `sample_advantages` (-1 for padding); the result has the layout of `loss_mask`
    and is 0 on prompt, tool-output and padding tokens.
    """
    if seq_index.shape != loss_mask.shape:
        raise ValueError(
            f"seq_index {tuple(seq_index.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must have the same shape"
        )
    if int(seq_index.max()) >= sample_advantages.numel():
        raise ValueError(
            f"seq_index refers to sequence {int(seq_index.max())} but only "
            f"{sample_advantages.numel()} advantages were given"
        )
    gathered = sample_advantages.to(torch.float32)[seq_index.clamp(min=0)]
    return torch.where(loss_mask.bool() & (seq_index >= 0), gathered, torch.zeros_like(gathered))


def arpo_hard_advantages(
    sample_advantages: torch.Tensor,
    parent_index: Sequence[int | None],
    branch_point: Sequence[int],
    lengths: Sequence[int],
) -> list[torch.Tensor]:
    """ARPO hard attribution: token t of sample i gets the mean advantage of every sample of the
    tree that shares token t with i (i included); tokens past every branch keep i's own value.

    Sample i is a root (`parent_index[i] is None`, a global sample) or branched from sample
    `parent_index[i]`, sharing its first `branch_point[i]` tokens (prompt, response and tool
    result). The shared prefix of two samples is the smallest branch point on the tree path
    between them; samples of different roots share nothing (the prompt is masked anyway).
    Returns one per-token tensor per sample, of length `lengths[i]`, to be masked by the loss
    mask like `token_advantages`.
    """
    num_samples = sample_advantages.numel()
    if not (len(parent_index) == len(branch_point) == len(lengths) == num_samples):
        raise ValueError("parent_index, branch_point and lengths need one entry per sample")

    def ancestry(i: int) -> list[tuple[int, int]]:
        """(node, prefix shared with i) from i up to its root."""
        chain, shared, node, seen = [(i, lengths[i])], lengths[i], i, {i}
        while parent_index[node] is not None:
            shared = min(shared, branch_point[node])
            node = parent_index[node]
            if not 0 <= node < num_samples or node in seen:
                raise ValueError(f"sample {i}: parent_index does not describe a tree")
            seen.add(node)
            chain.append((node, shared))
        return chain

    chains = [dict(ancestry(i)) for i in range(num_samples)]
    shared_prefix = torch.zeros(num_samples, num_samples, dtype=torch.long)
    for i in range(num_samples):
        for j in range(num_samples):
            common = [node for node in chains[i] if node in chains[j]]
            if common:  # the lowest common ancestor is the common node with the longest prefix
                shared_prefix[i, j] = max(min(chains[i][n], chains[j][n]) for n in common)

    advantages = sample_advantages.to(torch.float64)
    result = []
    for i in range(num_samples):
        positions = torch.arange(lengths[i])
        # [tokens, samples]; column i is all True: a sample shares its whole length with itself.
        sharing = positions[:, None] < shared_prefix[i][None, :]
        result.append((sharing.double() @ advantages) / sharing.sum(dim=1))
    return result
