"""The reference policy of the KL penalty on the tiny model: built from model.path, frozen while
the policy trains, still the initial weights after a checkpoint resume, and its log-probs reach
the loss (whose KL term and kl_* metrics it drives)."""

from __future__ import annotations

import pytest
import torch

from agentrl.common.config import AgentRLConfig
from agentrl.trainer.backends import create_backend
from agentrl.trainer.checkpoint import CheckpointManager, TrainingState
from agentrl.trainer.loss import GlobalTokenCounts, policy_loss
from agentrl.trainer.reference import ReferencePolicy
from agentrl.trainer.rl_step import step_metrics, train_step
from agentrl.trainer.train_batch import build_train_batch

from .test_rl_step import make_group

LEARNING_RATE = 1e-2


def run_config(model_dir, **algorithm) -> AgentRLConfig:
    return AgentRLConfig.model_validate(
        {
            "model": {"path": str(model_dir)},
            "trainer": {"device": "cpu", "cpu_threads": 1},
            "algorithm": {"learning_rate": LEARNING_RATE, **algorithm},
        }
    )


def batch_of(seed: int, algorithm):
    groups = [make_group(f"g{seed}{i}", [1.0, 0.0, 0.0, 1.0], seed=seed + i) for i in range(2)]
    return build_train_batch(groups, policy_version=0, algorithm=algorithm, max_staleness=4)


def reference_logprobs(reference: ReferencePolicy, batch) -> list[torch.Tensor]:
    micro_batches = batch.micro_batches(10_000)
    reference.annotate(micro_batches)
    return [mb.per_token["ref_logprobs"] for mb in micro_batches]


def test_no_reference_unless_the_kl_needs_it(tiny_checkpoint) -> None:
    assert ReferencePolicy.for_run(run_config(tiny_checkpoint)) is None
    assert ReferencePolicy.for_run(run_config(tiny_checkpoint, log_reference_kl=True)) is not None
    config = run_config(tiny_checkpoint, kl_coef=0.1)  # accepted by validation now
    backend = create_backend(config)
    with pytest.raises(ValueError, match="needs the reference policy"):
        train_step(backend, batch_of(0, config.algorithm), config.algorithm, 10_000)


def test_the_kl_penalty_trains_against_the_frozen_initial_weights(tiny_checkpoint) -> None:
    config = run_config(tiny_checkpoint, kl_coef=0.5, kl_estimator="k2")
    algorithm = config.algorithm
    backend, reference = create_backend(config), ReferencePolicy.for_run(config)
    frozen = {k: v.clone() for k, v in reference.backend.model.state_dict().items()}

    first = train_step(backend, batch_of(0, algorithm), algorithm, 30, reference)
    # Step 1 trains the initial weights themselves: the policy IS the reference.
    assert first.loss_metrics["kl_k1"] == pytest.approx(0.0, abs=1e-6)
    assert first.loss_metrics["kl_k3"] == pytest.approx(0.0, abs=1e-6)

    batch = batch_of(1, algorithm)
    micro_batches = batch.micro_batches(30)
    reference.annotate(micro_batches)
    counts = sum(
        (GlobalTokenCounts.of(mb.per_token["loss_mask"], mb.seq_index) for mb in micro_batches),
        GlobalTokenCounts(0, 0, 0),
    )
    expected = 0.0
    for mb, (logprobs, entropy) in zip(micro_batches, backend.logprobs(micro_batches)):
        loss, _ = policy_loss(
            logprobs,
            mb.per_token["old_logprobs"],
            mb.per_token["advantages"],
            mb.per_token["loss_mask"].bool(),
            mb.seq_index,
            entropy,
            algorithm,
            counts,
            ref_logprobs=mb.per_token["ref_logprobs"],
        )
        expected += float(loss)
    second = train_step(backend, batch, algorithm, 30, reference)
    assert second.loss_metrics["loss"] == pytest.approx(expected, abs=1e-5)
    kl = second.loss_metrics["kl_k2"]
    assert kl > 0 and second.loss_metrics["kl_loss"] == pytest.approx(kl, rel=1e-4)
    assert second.loss_metrics["loss"] == pytest.approx(
        second.loss_metrics["pg_loss"] + 0.5 * kl, abs=1e-6
    )
    assert second.time_reference_s > 0
    metrics = step_metrics(batch, second)
    assert {"kl_k1", "kl_k2", "kl_k3", "time_reference_s"} <= metrics.keys()
    # The policy moved; the reference did not.
    after = reference.backend.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(v, frozen[k]) for k, v in backend.model.state_dict().items()), (
        "the policy did not train"
    )


def test_after_a_resume_the_reference_is_still_the_initial_weights(
    tiny_checkpoint, tmp_path
) -> None:
    config = run_config(tiny_checkpoint, kl_coef=0.5)
    algorithm = config.algorithm
    backend, reference = create_backend(config), ReferencePolicy.for_run(config)
    for seed in range(2):
        train_step(backend, batch_of(seed, algorithm), algorithm, 10_000, reference)
    CheckpointManager(tmp_path / "checkpoints").save(backend, TrainingState(2, 2))
    initial = reference_logprobs(reference, batch_of(5, algorithm))

    # What rl_loop does on a restart: the reference from model.path, then the resume.
    resumed, reference_again = create_backend(config), ReferencePolicy.for_run(config)
    CheckpointManager(tmp_path / "checkpoints").load(resumed)
    again = reference_logprobs(reference_again, batch_of(5, algorithm))
    trained = [
        lp.where(mb.per_token["loss_mask"].bool(), 0.0)
        for mb, (lp, _) in zip(
            batch_of(5, algorithm).micro_batches(10_000),
            resumed.logprobs(batch_of(5, algorithm).micro_batches(10_000)),
        )
    ]
    assert all(torch.equal(a, b) for a, b in zip(initial, again, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(again, trained, strict=True))
