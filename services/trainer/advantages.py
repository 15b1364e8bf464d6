"""Advantages from outcome rewards (ALGORITHMS.md §2), and how they reach the model's tokens.

Per-sample estimators map the rewards of one batch, given as one 1-D tensor per group (the
samples of one prompt), to one advantage per sample (`compute_advantages`):

- GRPO: `A_i = (R_i - mean(R)) / (std(R) + 1e-6)`, or `R_i - mean(R)` without the division
  (Dr. GRPO). `std` is the **sample** standard deviation (Bessel's correction, divide by G - 1),
  as in verl and TRL, so advantages match the published recipes (Open-AgentRL is built on verl).
- RLOO: `A_i = R_i - mean_{j != i} R_j`, i.e. `G / (G - 1) * (R_i - mean(R))`.

Per-token estimators (`reinforce_pp_token_advantages`) need each sample's loss mask:

- REINFORCE++ (`reinforce_pp`): the outcome reward is the reward of the sample's last model
  token; the return of its j-th model token (of n) is `gamma^(n-1-j) * R` (tool output and
  prompt tokens are not actions: they neither count in the distance nor get a value). Then the
  returns are whitened over every loss token of the batch: `(G_t - mean) / (std + 1e-6)`, mean
  and sample std over tokens (not samples), as in the published method. No group baseline.
- REINFORCE++-baseline (`reinforce_pp_baseline`): the group mean is subtracted from each reward
  first, then the same token returns and whitening.

Singleton groups (one sample left after stale and failed samples are dropped): a group of one
has no baseline, so under `grpo`, `rloo` and `reinforce_pp_baseline` its advantage is 0 on every
token and it does not enter the batch's whitening statistics (verl would give GRPO `A = R`).
Under `reinforce_pp`, which has no group baseline, a singleton is an ordinary sample. A group
whose rewards are all equal gets 0 under the baseline estimators. (Dynamic sampling, on by
default, drops both kinds of group before any estimator sees them.)

Then:
- `filter_zero_signal_groups`: DAPO dynamic sampling's filter (keep groups whose rewards differ);
- `token_advantages`: broadcast one advantage per sample to its model tokens via the loss mask;
- `arpo_hard_advantages`: ARPO's hard attribution on a sampling tree (tokens shared by several
  branches get the mean advantage of those branches); train_batch.py applies it when
  `algorithm.arpo_attribution` is `hard`.

Rewards are computed in float64: they arrive as protobuf doubles and groups are small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Estimator = Literal["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
SAMPLE_ESTIMATORS: tuple[str, ...] = ("grpo", "rloo")
TOKEN_ESTIMATORS: tuple[str, ...] = ("reinforce_pp", "reinforce_pp_baseline")
ESTIMATORS: tuple[str, ...] = SAMPLE_ESTIMATORS + TOKEN_ESTIMATORS
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


def compute_advantages(
    groups: Sequence[torch.Tensor], estimator: str, std_normalize: bool = True
) -> list[torch.Tensor]:
    """One advantage per sample for each group of rewards (`AlgorithmConfig.advantage`, one of
    the per-sample estimators; the REINFORCE++ ones are `reinforce_pp_token_advantages`)."""
    if estimator in TOKEN_ESTIMATORS:
        raise ValueError(
            f"{estimator!r} gives one advantage per token: use reinforce_pp_token_advantages"
        )
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; use one of {ESTIMATORS}")
    _check_groups(groups)
    if estimator == "grpo":
        return [grpo_advantages(g, std_normalize) for g in groups]
    return [rloo_advantages(g) for g in groups]


def _check_groups(groups: Sequence[torch.Tensor]) -> None:
    for index, group in enumerate(groups):
        if group.dim() != 1 or group.numel() == 0:
            raise ValueError(
                f"group {index}: rewards must be a non-empty 1-D tensor, "
                f"got shape {tuple(group.shape)}"
            )


def discounted_token_returns(reward: float, loss_mask: Sequence[int], gamma: float) -> torch.Tensor:
    """Per-token returns of an outcome reward paid at the last model token: the j-th of n model
    tokens gets `gamma^(n-1-j) * reward`, every other position 0 (float64, len(loss_mask))."""
    mask = torch.tensor(list(loss_mask), dtype=torch.bool)
    returns = torch.zeros(mask.numel(), dtype=torch.float64)
    num_actions = int(mask.sum())
    if num_actions:
        distance = torch.arange(num_actions - 1, -1, -1, dtype=torch.float64)
        returns[mask] = reward * torch.pow(torch.tensor(gamma, dtype=torch.float64), distance)
    return returns


def reinforce_pp_token_advantages(
    groups: Sequence[torch.Tensor],
    loss_masks: Sequence[Sequence[Sequence[int]]],
    *,
    baseline: bool,
    gamma: float = 1.0,
) -> list[list[torch.Tensor]]:
    """REINFORCE++ (`baseline=False`) or REINFORCE++-baseline advantages, one float64 tensor per
    sample of the length of its loss mask, 0 off the mask (see the module docstring).

    `loss_masks[g][i]` is the loss mask of sample i of group g. Whitening is over the loss
    tokens of every sample that has a baseline (all of them without one), in one batch.
    """
    _check_groups(groups)
    if len(loss_masks) != len(groups) or any(
        len(masks) != group.numel() for masks, group in zip(loss_masks, groups, strict=False)
    ):
        raise ValueError("loss_masks need one mask per sample of every group")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    returns: list[list[torch.Tensor]] = []
    live: list[torch.Tensor] = []  # the returns entering the whitening statistics
    for group, masks in zip(groups, loss_masks, strict=True):
        rewards = group.to(torch.float64)
        has_baseline = not baseline or rewards.numel() >= 2
        shaped = rewards - rewards.mean() if baseline else rewards
        per_sample = []
        for reward, mask in zip(shaped.tolist(), masks, strict=True):
            values = discounted_token_returns(reward, mask, gamma)
            per_sample.append(values)
            if has_baseline:
                live.append(values[torch.tensor(list(mask), dtype=torch.bool)])
        returns.append(per_sample if has_baseline else [None] * len(per_sample))
    tokens = torch.cat(live) if live else torch.zeros(0, dtype=torch.float64)
    mean = tokens.mean() if tokens.numel() else torch.zeros((), dtype=torch.float64)
    std = _sample_std(tokens)
    result = []
    for group_returns, masks in zip(returns, loss_masks, strict=True):
        per_sample = []
        for values, mask in zip(group_returns, masks, strict=True):
            mask_tensor = torch.tensor(list(mask), dtype=torch.bool)
            if values is None:  # a singleton under a baseline estimator: no signal
                per_sample.append(torch.zeros(mask_tensor.numel(), dtype=torch.float64))
                continue
            whitened = (values - mean) / (std + STD_EPS)
            per_sample.append(torch.where(mask_tensor, whitened, torch.zeros_like(whitened)))
        result.append(per_sample)
    return result


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
