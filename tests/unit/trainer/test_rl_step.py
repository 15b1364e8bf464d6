"""The RL driver's core on hand-made Group protos (no vLLM, no Redis): admission arithmetic at
the staleness bound, stale and zero-signal filtering with their counts, and one optimizer step
on the tiny model whose loss equals `policy_loss` computed directly."""

from __future__ import annotations

import pytest
import torch

from agentrl.common.config import AlgorithmConfig
from agentrl.proto.core.v1 import group_pb2, task_pb2, trajectory_pb2
from agentrl.trainer.advantages import compute_advantages, reinforce_pp_token_advantages
from agentrl.trainer.backends.interface import OptimizerSettings
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss
from agentrl.trainer.rl_step import AdmissionControl, step_metrics, train_step
from agentrl.trainer.train_batch import build_train_batch

PROMPT_LENGTH = 3


def make_group(
    group_id: str,
    rewards: list[float],
    versions: list[list[int]] | None = None,
    response_length: int = 5,
    admitted_version: int = 0,
    seed: int = 0,
    errors: list[str] | None = None,
) -> group_pb2.Group:
    """A group of len(rewards) samples: PROMPT_LENGTH prompt tokens, then `response_length`
    sampled tokens whose versions are `versions[i]` (one value broadcast, or per token)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i, reward in enumerate(rewards):
        length = PROMPT_LENGTH + response_length + i  # different lengths exercise packing
        token_ids = torch.randint(3, 300, (length,), generator=generator).tolist()
        sampled = [0] * PROMPT_LENGTH + [1] * (length - PROMPT_LENGTH)
        version = (versions or [[admitted_version]] * len(rewards))[i]
        per_token = version * (length - PROMPT_LENGTH) if len(version) == 1 else version
        policy_versions = [-1] * PROMPT_LENGTH + list(per_token)
        behaviour = [0.0] * PROMPT_LENGTH + (
            -1.0 - torch.rand(length - PROMPT_LENGTH, generator=generator) * 4
        ).tolist()
        samples.append(
            group_pb2.ScoredTrajectory(
                trajectory=trajectory_pb2.Trajectory(
                    trajectory_id=f"{group_id}-{i}",
                    sample_index=i,
                    prompt_length=PROMPT_LENGTH,
                    token_ids=token_ids,
                    loss_mask=sampled,
                    behaviour_logprobs=behaviour,
                    policy_versions=policy_versions,
                    num_tool_calls=i % 2,
                    error=(errors or [""] * len(rewards))[i],
                ),
                result=group_pb2.RewardResult(
                    reward=reward,
                    verdict=group_pb2.VERDICT_CORRECT
                    if reward > 0
                    else group_pb2.VERDICT_INCORRECT,
                ),
            )
        )
    task = task_pb2.RolloutTask(task_id=group_id, admitted_policy_version=admitted_version)
    return group_pb2.Group(group_id=group_id, idempotency_key=group_id, task=task, samples=samples)


def test_admission_stops_exactly_at_the_staleness_bound() -> None:
    control = AdmissionControl(batch_size=4, max_staleness=1)
    # Version 0: (1 + 0 + 1) * 4 = 8 prompts may be in the system.
    assert control.capacity(0) == 8
    control.on_admitted(7)
    assert control.can_admit(0) and control.capacity(0) == 1
    control.on_admitted(1)
    assert not control.can_admit(0) and control.capacity(0) == 0
    # A full batch comes back and trains: accepted + running is still 8 at version 0 ...
    control.on_returned(num_groups=4, num_kept=4)
    assert (control.accepted, control.running) == (4, 4)
    assert not control.can_admit(0)
    # ... and the new version opens exactly one batch more.
    assert control.capacity(1) == 4 and control.can_admit(1)
    # A dropped group (zero signal) frees its slot: it is no longer running, never accepted.
    control.on_returned(num_groups=1, num_kept=0)
    assert control.capacity(0) == 1
    synchronous = AdmissionControl(batch_size=3, max_staleness=0)
    assert synchronous.capacity(0) == 3 and synchronous.capacity(2) == 9
    restored = AdmissionControl(batch_size=4, max_staleness=1)
    restored.load_state_dict(control.state_dict())
    assert restored.capacity(1) == control.capacity(1)


def test_admission_rejects_bad_config_and_impossible_returns() -> None:
    with pytest.raises(ValueError, match="max_staleness must be >= 0"):
        AdmissionControl(batch_size=4, max_staleness=-1)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        AdmissionControl(batch_size=0, max_staleness=1)
    control = AdmissionControl(batch_size=4, max_staleness=1)
    control.on_admitted(2)
    with pytest.raises(ValueError, match="only 2 prompts are running"):
        control.on_returned(num_groups=3, num_kept=3)


def test_too_stale_samples_are_dropped_and_counted() -> None:
    # Trained at version 5 with max_staleness 2: a sample is kept when its oldest token is >= 3.
    group = make_group("g", [1.0, 0.0, 1.0, 0.0], versions=[[3], [5], [2, 4, 4, 4, 4, 4, 4], [4]])
    batch = build_train_batch(
        [group], policy_version=5, algorithm=AlgorithmConfig(), max_staleness=2
    )
    assert batch.num_stale_samples == 1  # the mixed-version sample whose oldest token is 2
    assert [s.staleness for s in batch.samples] == [2, 0, 1]
    assert batch.staleness_histogram() == {0: 1, 1: 1, 2: 1}
    assert batch.rewards_seen == [1.0, 0.0, 0.0]
    # Failed rollouts are dropped and counted too; every sample stale -> nothing to train on.
    failed = make_group("f", [1.0, 1.0, 0.0], errors=["", "sandbox down", ""])
    batch = build_train_batch(
        [failed], policy_version=0, algorithm=AlgorithmConfig(), max_staleness=0
    )
    assert batch.num_error_samples == 1 and len(batch.samples) == 2
    batch = build_train_batch(
        [make_group("old", [1.0, 0.0])],
        policy_version=9,
        algorithm=AlgorithmConfig(),
        max_staleness=4,
    )
    assert batch.num_stale_samples == 2 and batch.samples == [] and batch.num_kept_groups == 0


def test_zero_signal_groups_are_dropped_and_the_rest_get_grpo_advantages() -> None:
    groups = [
        make_group("same", [1.0, 1.0, 1.0], admitted_version=10),
        make_group("mixed", [1.0, 0.0, 0.0, 0.0], admitted_version=10),
        # one sample left after the stale drop: no baseline, no signal
        make_group("lone", [1.0, 0.0], versions=[[10], [3]]),
    ]
    batch = build_train_batch(
        groups, policy_version=10, algorithm=AlgorithmConfig(), max_staleness=4
    )
    assert (batch.num_groups, batch.num_kept_groups) == (3, 1)
    assert batch.kept_group_ratio == pytest.approx(1 / 3)
    # GRPO with the sample std: rewards [1, 0, 0, 0] -> std 0.5, A = [1.5, -0.5, -0.5, -0.5].
    assert [s.advantage for s in batch.samples] == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    keep_all = build_train_batch(
        groups[:2],
        policy_version=10,
        algorithm=AlgorithmConfig(dynamic_sampling=False),
        max_staleness=4,
    )
    assert keep_all.num_kept_groups == 2 and len(keep_all.samples) == 7
    assert [s.advantage for s in keep_all.samples[:3]] == [0.0, 0.0, 0.0]


def test_samples_whose_verifier_failed_are_dropped_not_trained_at_zero() -> None:
    group = make_group("v", [1.0, 0.0, 0.0, 1.0])
    # The verifier timed out on sample 1: its reward (0, the bias) is a placeholder.
    group.samples[1].result.verdict = group_pb2.VERDICT_VERIFIER_ERROR
    batch = build_train_batch(
        [group], policy_version=0, algorithm=AlgorithmConfig(), max_staleness=0
    )
    assert batch.num_verifier_error_samples == 1 and len(batch.samples) == 3
    assert batch.rewards_seen == [1.0, 0.0, 1.0]
    # GRPO over the three real rewards [1, 0, 1], not over [1, 0, 0, 1].
    expected = compute_advantages([torch.tensor([1.0, 0.0, 1.0])], "grpo")[0].tolist()
    assert [s.advantage for s in batch.samples] == pytest.approx(expected)
    assert step_metrics_keys_include(batch, "samples_dropped_verifier_error")


def step_metrics_keys_include(batch, name: str) -> bool:
    from agentrl.trainer.backends.interface import StepStats
    from agentrl.trainer.rl_step import StepOutcome

    outcome = StepOutcome({}, StepStats(1, 0.0, 0.0), GlobalTokenCounts(1, 1, 1), 1, 0.0)
    return step_metrics(batch, outcome)[name] == batch.num_verifier_error_samples


def sent_advantages(batch, sample: int) -> list[float]:
    """The per-token advantages the loss receives for one sample of the batch."""
    (micro_batch,) = batch.micro_batches(10_000)
    position = micro_batch.sample_indices.index(sample)
    return micro_batch.per_token["advantages"][micro_batch.seq_index == position].tolist()


def tree_group() -> group_pb2.Group:
    """An ARPO tree: root 0, sample 1 branched from 0 after 5 tokens, sample 2 from 1 after 6;
    rewards 1, 0, 0 (prompt 3 tokens: model tokens 3-4 are shared by all three, token 5 by
    samples 1 and 2)."""
    group = make_group("tree", [1.0, 0.0, 0.0], response_length=6)
    for index, (parent, point) in enumerate([("", 0), ("tree-0", 5), ("tree-1", 6)]):
        group.samples[index].trajectory.parent_trajectory_id = parent
        group.samples[index].trajectory.branch_point = point
    return group


def test_arpo_hard_attribution_is_the_training_path_when_selected() -> None:
    soft = build_train_batch([tree_group()], 0, AlgorithmConfig(), max_staleness=0)
    assert all(s.token_advantages is None for s in soft.samples)
    hard = build_train_batch(
        [tree_group()], 0, AlgorithmConfig(arpo_attribution="hard"), max_staleness=0
    )
    a = [s.advantage for s in soft.samples]  # GRPO: [2/sqrt(3), -1/sqrt(3), -1/sqrt(3)]
    root = hard.samples[0].token_advantages
    assert root[:3] == [0.0] * 3  # the prompt stays masked
    assert root[3:5] == pytest.approx([sum(a) / 3] * 2, abs=1e-6)
    assert root[5:] == pytest.approx([a[0]] * 4, abs=1e-6)  # the root's own tokens
    middle = hard.samples[1].token_advantages
    assert middle[5] == pytest.approx((a[1] + a[2]) / 2, abs=1e-6)
    assert middle[6:] == pytest.approx([a[1]] * (len(middle) - 6), abs=1e-6)
    # ... and they reach the loss: the micro-batch's advantages are the per-token values.
    assert sent_advantages(hard, 0) == pytest.approx(root, abs=1e-6)
    # The middle sample dropped (its rollout failed): sample 2 hangs from the root after
    # min(5, 6) = 5 tokens.
    group = tree_group()
    group.samples[1].trajectory.error = "sandbox down"
    hard = build_train_batch([group], 0, AlgorithmConfig(arpo_attribution="hard"), 0)
    b = [s.advantage for s in build_train_batch([group], 0, AlgorithmConfig(), 0).samples]
    assert hard.samples[1].token_advantages[3:5] == pytest.approx([sum(b) / 2] * 2, abs=1e-6)
    assert hard.samples[1].token_advantages[5] == pytest.approx(b[1], abs=1e-6)


def test_reinforce_pp_reaches_the_micro_batches_per_token() -> None:
    groups = [make_group("a", [1.0, 0.0]), make_group("b", [1.0, 1.0, 0.0], seed=1)]
    algorithm = AlgorithmConfig(advantage="reinforce_pp", gamma=0.9, dynamic_sampling=False)
    batch = build_train_batch(groups, 0, algorithm, max_staleness=0)
    masks = [s.loss_mask for s in batch.samples]
    rewards = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])]
    expected = reinforce_pp_token_advantages(
        rewards, [masks[:2], masks[2:]], baseline=False, gamma=0.9
    )
    flat = [values.tolist() for group in expected for values in group]
    assert [s.token_advantages for s in batch.samples] == [pytest.approx(v, abs=1e-6) for v in flat]
    assert sent_advantages(batch, 0) == pytest.approx(flat[0], abs=1e-6)
    assert sent_advantages(batch, 4) == pytest.approx(flat[4], abs=1e-6)
    with pytest.raises(ValueError, match="arpo_attribution 'hard'"):
        AlgorithmConfig(advantage="reinforce_pp", arpo_attribution="hard")


def test_a_step_changes_the_weights_and_its_loss_is_policy_loss(tiny_checkpoint) -> None:
    from agentrl.trainer.backends.torch.backend import TorchBackend

    torch.manual_seed(0)
    backend = TorchBackend(tiny_checkpoint, OptimizerSettings(learning_rate=1e-2), device="cpu")
    algorithm = AlgorithmConfig(learning_rate=1e-2)
    groups = [
        make_group(f"g{i}", [1.0, 0.0, 0.0, 1.0], seed=i, response_length=6 + i) for i in range(3)
    ]
    batch = build_train_batch(groups, policy_version=0, algorithm=algorithm, max_staleness=4)
    budget = 30  # several micro-batches: the loss must be normalised by the global counts
    micro_batches = batch.micro_batches(budget)
    assert len(micro_batches) > 1
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    expected = 0.0
    for mb, (logprobs, entropy) in zip(micro_batches, backend.logprobs(micro_batches)):
        fields = mb.per_token
        loss, _ = policy_loss(
            logprobs,
            fields["old_logprobs"],
            fields["advantages"],
            fields["loss_mask"].bool(),
            mb.seq_index,
            entropy,
            algorithm,
            counts,
            behaviour_logprobs=fields["behaviour_logprobs"],
        )
        expected += float(loss)
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}

    outcome = train_step(backend, batch, algorithm, micro_batch_tokens=budget)

    assert outcome.loss_metrics["loss"] == pytest.approx(expected, abs=1e-5)
    assert outcome.counts == counts and outcome.stats.step == 1
    assert outcome.stats.grad_norm > 0
    changed = [k for k, v in backend.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the optimizer step left every weight unchanged"
    metrics = step_metrics(batch, outcome, time_waiting_s=0.5, time_weight_sync_s=0.25)
    assert metrics["reward_mean"] == 0.5 and metrics["accuracy"] == 0.5
    assert metrics["kept_group_ratio"] == 1.0 and metrics["staleness_0"] == 12
    assert metrics["time_step_s"] == pytest.approx(0.75 + outcome.time_training_s)
    for name in (
        "entropy",
        "approx_kl",
        "clip_frac_low",
        "clip_frac_high",
        "grad_norm",
        "response_length_mean",
        "tool_calls_mean",
    ):
        assert name in metrics


def test_decoupled_ppo_clips_against_the_current_weights(tiny_checkpoint) -> None:
    from agentrl.trainer.backends.torch.backend import TorchBackend

    backend = TorchBackend(tiny_checkpoint, OptimizerSettings(learning_rate=1e-3), device="cpu")
    batch = build_train_batch(
        [make_group("g", [1.0, 0.0, 0.0])],
        policy_version=0,
        algorithm=AlgorithmConfig(),
        max_staleness=0,
    )
    outcome = train_step(backend, batch, AlgorithmConfig(decoupled_ppo=True), micro_batch_tokens=64)
    # π_prox is the weights before the update, so the ratio starts at exactly 1: nothing clipped
    # and approx KL 0, whatever the (made-up) behaviour log-probs were.
    assert outcome.loss_metrics["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert outcome.loss_metrics["clip_frac_low"] == 0.0
    assert outcome.loss_metrics["clip_frac_high"] == 0.0
