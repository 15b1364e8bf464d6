"""The policy loss against values computed by hand: clip-higher, dual clip, aggregation, KL,
entropy, GSPO, decoupled PPO and the metrics. Float64 so the clip boundaries are exact."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.common.config import AlgorithmConfig
from agentrl.trainer.loss import GlobalTokenCounts, kl_estimates, policy_loss

D = torch.float64


def config(**overrides) -> AlgorithmConfig:
    return AlgorithmConfig(dual_clip=None).model_copy(update=overrides)


def one_token(ratio: float, advantage: float, **overrides):
    """Loss, d loss / d logprob and metrics of a single token with the given ratio."""
    logprobs = torch.tensor([[math.log(ratio)]], dtype=D, requires_grad=True)
    loss, metrics = policy_loss(
        logprobs,
        torch.zeros(1, 1, dtype=D),
        torch.tensor([[advantage]], dtype=D),
        torch.ones(1, 1, dtype=torch.bool),
        torch.zeros(1, 1, dtype=torch.long),
        torch.zeros(1, 1, dtype=D),
        config(**overrides),
    )
    loss.backward()
    return loss.item(), logprobs.grad.item(), metrics


STEP = 1e-6  # just inside / just outside a clip boundary


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "grad", "low", "high"),
    [
        (0.8, -1.0, 0.8, None, 0, 0),  # exactly 1 - eps_low: both sides agree
        (0.8 + STEP, -1.0, 0.8 + STEP, 0.8 + STEP, 0, 0),  # inside: gradient r·|A|
        (0.8 - STEP, -1.0, 0.8, 0.0, 1, 0),  # outside: clipped, no gradient
        (1.28, 1.0, -1.28, None, 0, 0),  # exactly 1 + eps_high
        (1.28 - STEP, 1.0, -(1.28 - STEP), -(1.28 - STEP), 0, 0),
        (1.28 + STEP, 1.0, -1.28, 0.0, 0, 1),
        (1.2 + STEP, 1.0, -(1.2 + STEP), -(1.2 + STEP), 0, 0),  # a symmetric 0.2 would clip
        (0.5, 1.0, -0.5, -0.5, 0, 0),  # below the range with A > 0: not clipped
        (2.0, -1.0, 2.0, 2.0, 0, 0),  # above the range with A < 0: not clipped
    ],
)
def test_clip_higher_boundaries(ratio, advantage, loss, grad, low, high):
    value, gradient, metrics = one_token(ratio, advantage)
    assert value == pytest.approx(loss, abs=1e-12)
    if grad is not None:
        assert gradient == pytest.approx(grad, abs=1e-9)
    assert (metrics["clip_frac_low"].item(), metrics["clip_frac_high"].item()) == (low, high)


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "grad", "hit"),
    [
        (5.0, -1.0, 3.0, 0.0, 1),  # capped at c·|A|
        (2.5, -1.0, 2.5, 2.5, 0),  # below c: ordinary PPO
        (4.0, -2.0, 6.0, 0.0, 1),  # the cap scales with |A|
        (5.0, 1.0, -1.28, 0.0, 0),  # never for A > 0
    ],
)
def test_dual_clip(ratio, advantage, loss, grad, hit):
    value, gradient, metrics = one_token(ratio, advantage, dual_clip=3.0)
    assert value == pytest.approx(loss, abs=1e-12)
    assert gradient == pytest.approx(grad, abs=1e-12)
    assert metrics["dual_clip_frac"].item() == hit
    if hit:  # without the dual clip the loss grows with the ratio
        assert one_token(ratio, advantage)[0] == pytest.approx(-ratio * advantage, abs=1e-12)


# Two packed sequences at ratio 1 (pg = -A): seq 0 has A [1, 3]; seq 1 has A [2, -4, 5] and a
# masked 4th token. Per-token pg: [-1, -3 | -2, 4, -5, (masked)].
PACKED_ADVANTAGES = torch.tensor([[1.0, 3.0, 2.0, -4.0, 5.0, 7.0]], dtype=D)
PACKED_MASK = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
PACKED_SEQ = torch.tensor([[0, 0, 1, 1, 1, 1]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (-1 - 3 - 2 + 4 - 5) / 5),
        ("seq-mean-token-sum", ((-4) + (-3)) / 2),
        ("seq-mean-token-mean", ((-4 / 2) + (-3 / 3)) / 2),
        ("seq-mean-token-sum-norm", ((-4 / 10) + (-3 / 10)) / 2),
    ],
)
def test_aggregation_modes(mode, expected):
    logprobs = torch.full((1, 6), -1.0, dtype=D)
    loss, metrics = policy_loss(
        logprobs,
        logprobs.clone(),
        PACKED_ADVANTAGES,
        PACKED_MASK,
        PACKED_SEQ,
        torch.zeros(1, 6, dtype=D),
        config(loss_agg=mode, loss_agg_norm_length_tokens=10),
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["masked_token_ratio"].item() == pytest.approx(1 / 6)


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_an_all_masked_row_changes_nothing(mode):
    cfg = config(loss_agg=mode, loss_agg_norm_length_tokens=8, dual_clip=3.0)
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(2, 4, generator=generator, dtype=D)
    old = logprobs + 0.3 * torch.randn(2, 4, generator=generator, dtype=D)
    old[1, :2], old[1, 2:] = -math.inf, math.nan  # garbage in a masked row must not reach
    # the loss or its gradient
    advantages = torch.tensor([[1.0, -2.0, 0.5, 1.5], [9.0, 9.0, 9.0, 9.0]], dtype=D)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    seq = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    both = logprobs.clone().requires_grad_(True)
    loss, metrics = policy_loss(both, old, advantages, mask, seq, torch.ones(2, 4, dtype=D), cfg)
    loss.backward()
    alone = logprobs[:1].clone().requires_grad_(True)
    expected, _ = policy_loss(
        alone, old[:1], advantages[:1], mask[:1], seq[:1], torch.ones(1, 4, dtype=D), cfg
    )
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.equal(both.grad[1], torch.zeros(4, dtype=D))
    assert torch.allclose(both.grad[:1], alone.grad)
    assert GlobalTokenCounts.of(mask, seq) == GlobalTokenCounts(3, 1, 8)
    assert metrics["masked_token_ratio"].item() == pytest.approx(5 / 8)


def test_kl_estimators_are_logged_at_zero_coefficient_and_enter_the_loss_when_set():
    # π_θ = 0.5, π_ref = 0.25: x = log 2; k1 = x, k2 = x²/2, k3 = 1/2 - 1 + x.
    x = math.log(2)
    logprobs = torch.full((1, 2), math.log(0.5), dtype=D)
    ref = torch.full((1, 2), math.log(0.25), dtype=D)
    args = (
        logprobs,
        logprobs.clone(),
        torch.ones(1, 2, dtype=D),
        torch.ones(1, 2, dtype=torch.bool),
        torch.zeros(1, 2, dtype=torch.long),
        torch.zeros(1, 2, dtype=D),
    )
    plain, metrics = policy_loss(*args, config(), ref_logprobs=ref)
    assert plain.item() == pytest.approx(-1.0)
    assert metrics["kl_k1"].item() == pytest.approx(x)
    assert metrics["kl_k2"].item() == pytest.approx(x * x / 2)
    assert metrics["kl_k3"].item() == pytest.approx(0.5 - 1 + x)
    for estimator, value in [("k1", x), ("k2", x * x / 2), ("k3", x - 0.5)]:
        loss, _ = policy_loss(*args, config(kl_coef=0.1, kl_estimator=estimator), ref_logprobs=ref)
        assert loss.item() == pytest.approx(-1.0 + 0.1 * value)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(*args, config(kl_coef=0.1))


def test_kl_estimators_follow_verls_clamps():
    # x = log π_θ - log π_ref far from 0 both ways: k1, k2 unclamped; k3 = e^d - d - 1 with
    # d = -x clamped to ±20, then the result clamped to ±10.
    x = torch.tensor([-30.0, -3.0, -1.0, 0.0, 2.0, 25.0], dtype=D)
    estimates = kl_estimates(x, torch.zeros_like(x))
    assert estimates["k1"].tolist() == x.tolist()
    assert estimates["k2"].tolist() == pytest.approx((x * x / 2).tolist())
    d = (-x).clamp(-20, 20)
    expected = (torch.exp(d) - d - 1).clamp(-10, 10)
    assert estimates["k3"].tolist() == pytest.approx(expected.tolist())
    assert estimates["k3"][0] == 10.0  # e^20 clamped to 10 (d = 30 clamped to 20 first)
    assert estimates["k3"][-1] == 10.0  # d = -20: e^-20 + 20 - 1 = 19, clamped to 10
    assert estimates["k3"][2] == pytest.approx(math.e - 2)  # unclamped in between
    # Past the k3 bound the gradient is 0: one collapsed token cannot dominate the penalty.
    logprobs = torch.tensor([-15.0, -0.5], dtype=D, requires_grad=True)
    kl_estimates(logprobs, torch.zeros(2, dtype=D))["k3"].sum().backward()
    assert logprobs.grad[0] == 0.0 and logprobs.grad[1] != 0.0


def test_kl_off_the_mask_is_zero_even_when_the_reference_holds_garbage():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], dtype=D, requires_grad=True)
    ref = torch.tensor([[float("-inf"), -2.5, float("nan")]], dtype=D)
    mask = torch.tensor([[False, True, False]])
    loss, metrics = policy_loss(
        logprobs,
        logprobs.detach().clone(),
        torch.ones(1, 3, dtype=D),
        mask,
        torch.zeros(1, 3, dtype=torch.long),
        torch.zeros(1, 3, dtype=D),
        config(kl_coef=0.5, kl_estimator="k2"),
        ref_logprobs=ref,
    )
    loss.backward()
    assert metrics["kl_k1"].item() == pytest.approx(0.5)
    assert torch.isfinite(logprobs.grad).all() and logprobs.grad[0, 0] == 0.0


def test_entropy_is_always_logged_and_is_a_bonus_when_set():
    logprobs = torch.zeros(1, 3, dtype=D)
    entropy = torch.tensor([[9.0, 1.0, 2.0]], dtype=D)  # token 0 is masked
    args = (
        logprobs,
        logprobs.clone(),
        torch.ones(1, 3, dtype=D),
        torch.tensor([[0, 1, 1]], dtype=torch.bool),
        torch.zeros(1, 3, dtype=torch.long),
        entropy,
    )
    loss, metrics = policy_loss(*args, config())
    assert (loss.item(), metrics["entropy"].item()) == (pytest.approx(-1.0), pytest.approx(1.5))
    bonus, _ = policy_loss(*args, config(entropy_coef=0.01))
    assert bonus.item() == pytest.approx(-1.0 - 0.01 * 1.5)


def test_gspo_uses_one_clipped_ratio_per_sequence():
    # seq 0: log r [0.1, -0.2, 0.4] -> s = e^0.1, inside the clip range;
    # seq 1: log r [0.5, 0.5, -0.1] -> s = e^0.3 = 1.35 > 1.28, clipped for all its tokens.
    log_ratio = torch.tensor([[0.1, -0.2, 0.4, 0.5, 0.5, -0.1]], dtype=D)
    logprobs = (log_ratio - 1.0).requires_grad_(True)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1]])
    loss, metrics = policy_loss(
        logprobs,
        torch.full((1, 6), -1.0, dtype=D),
        torch.ones(1, 6, dtype=D),
        torch.ones(1, 6, dtype=torch.bool),
        seq,
        torch.zeros(1, 6, dtype=D),
        config(gspo=True, loss_agg="seq-mean-token-mean"),
    )
    loss.backward()
    s = math.exp(0.1)
    assert loss.item() == pytest.approx((-s + -1.28) / 2, abs=1e-12)
    # d/dlogπ_t of -s/2 with s = exp(mean of 3 log-ratios): -s/6 each; the clipped seq: 0.
    assert logprobs.grad[0].tolist() == pytest.approx([-s / 6] * 3 + [0.0] * 3, abs=1e-12)
    assert metrics["clip_frac_high"].item() == pytest.approx(3 / 6)


def decoupled_case(prox_minus_behaviour: float, **overrides):
    generator = torch.Generator().manual_seed(3)
    logprobs = -torch.rand(2, 5, generator=generator, dtype=D)
    prox = logprobs + 0.4 * torch.randn(2, 5, generator=generator, dtype=D)
    advantages = torch.randn(2, 5, generator=generator, dtype=D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 0] = False
    seq = torch.tensor([[0] * 5, [1] * 5])
    entropy = torch.rand(2, 5, generator=generator, dtype=D)
    cfg = config(dual_clip=3.0, **overrides)

    def run(decoupled: bool):
        theta = logprobs.clone().requires_grad_(True)
        extra = {"behaviour_logprobs": prox - prox_minus_behaviour} if decoupled else {}
        loss, metrics = policy_loss(
            theta,
            prox,
            advantages,
            mask,
            seq,
            entropy,
            cfg.model_copy(update={"decoupled_ppo": decoupled}),
            **extra,
        )
        loss.backward()
        return loss, theta.grad, metrics

    return run(True), run(False)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_decoupled_ppo_with_prox_equal_behaviour_is_plain_ppo(mode):
    (loss, grad, metrics), (plain, plain_grad, _) = decoupled_case(0.0, loss_agg=mode)
    assert loss.item() == plain.item()
    assert torch.equal(grad, plain_grad)
    assert metrics["behaviour_cap_hits"].item() == 0


def test_decoupled_ppo_weights_clamps_and_masks_by_the_behaviour_ratio():
    (loss, grad, metrics), (plain, plain_grad, _) = decoupled_case(math.log(2.0))
    assert loss.item() == pytest.approx(2 * plain.item(), rel=1e-12)
    assert torch.allclose(grad, 2 * plain_grad)
    (loss, _, metrics), (plain, _, _) = decoupled_case(math.log(5.0) - 1e-9)  # just below the cap
    assert metrics["behaviour_cap_hits"].item() == 0
    assert loss.item() == pytest.approx(5 * plain.item(), rel=1e-8)
    (loss, _, metrics), (plain, _, _) = decoupled_case(
        math.log(6.0), behaviour_weight_cap_mode="clamp"
    )
    assert loss.item() == pytest.approx(5 * plain.item(), rel=1e-12)
    assert metrics["behaviour_cap_hits"].item() == 9  # every loss token
    (loss, grad, metrics), _ = decoupled_case(math.log(6.0), behaviour_weight_cap_mode="mask")
    assert (loss.item(), metrics["behaviour_cap_hits"].item()) == (0.0, 9)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_decoupled_ppo_needs_behaviour_logprobs_and_shapes_must_agree():
    x = torch.zeros(1, 2, dtype=D)
    args = (x, x, x, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.long), x)
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        policy_loss(*args, config(decoupled_ppo=True))
    with pytest.raises(ValueError, match="one shape"):
        policy_loss(*args[:5], torch.zeros(1, 3, dtype=D), config())
