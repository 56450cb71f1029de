"""Tests for steer.losses: hand-computed losses and metrics, clip_cov selection, kwargs checks, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.aggregation import aggregate
from steer.losses import (
    KL_ESTIMATORS,
    POLICY_LOSSES,
    clip_cov_loss,
    clip_indicator,
    entropy_bonus,
    kl_cov_loss,
    kl_penalty,
    ppo_clip_loss,
)

pytestmark = pytest.mark.unit

F64 = torch.float64


def _logps(ratios, old=-1.0):
    """old_logp and logp (N, T) such that exp(logp - old_logp) = ratios."""
    ratios = torch.tensor(ratios, dtype=F64)
    old_logp = torch.full_like(ratios, old)
    return (old_logp + ratios.log()).requires_grad_(True), old_logp


def test_registries():
    assert POLICY_LOSSES.names() == ["cispo", "clip_cov", "gspo", "kl_cov", "ppo_clip", "reinforce"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert POLICY_LOSSES.get("ppo_clip") is ppo_clip_loss


# ------------------------------------------------------------------------------------------- ppo_clip
# Row 0 has A = +1, row 1 has A = -2; the 4th column is padding (ratio 100 there must not count).
RATIOS = [[1.1, 1.5, 0.5, 100.0], [0.5, 1.5, 12.0, 100.0]]
ADV = torch.tensor([1.0, -2.0], dtype=F64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=F64)


def test_ppo_clip_hand_computed_values_and_metrics():
    logp, old = _logps(RATIOS)
    loss, m = ppo_clip_loss(logp, old, ADV, MASK)  # eps_low 0.2, eps_high 0.28, c = 10
    # A=+1: r=1.1 -> max(-1.1, -1.1) = -1.1; r=1.5 -> max(-1.5, -1.28) = -1.28 (clipped high);
    #       r=0.5 -> max(-0.5, -0.8) = -0.5 (unclipped: a low ratio with A > 0 is not clipped)
    # A=-2: r=0.5 -> max(1.0, 1.6) = 1.6 (clipped low); r=1.5 -> max(3.0, 2.56) = 3.0;
    #       r=12  -> max(24, 2.56) = 24, dual clip min(24, 2*10) = 20
    expected = torch.tensor([[-1.1, -1.28, -0.5], [1.6, 3.0, 20.0]], dtype=F64)
    torch.testing.assert_close(loss[:, :3], expected)
    # metrics over the 6 valid tokens
    assert m["actor/clipfrac"].item() == pytest.approx(2 / 6)
    assert m["actor/clipfrac_lower"].item() == pytest.approx(1 / 6)
    assert m["actor/clipfrac_higher"].item() == pytest.approx(1 / 6)
    assert m["actor/dual_clipfrac"].item() == pytest.approx(1 / 6)
    assert m["actor/ratio_mean"].item() == pytest.approx((1.1 + 1.5 + 0.5 + 0.5 + 1.5 + 12) / 6, rel=1e-6)
    kl = -sum(math.log(r) for r in [1.1, 1.5, 0.5, 0.5, 1.5, 12]) / 6  # mean of old_logp - logp
    assert m["actor/ppo_kl"].item() == pytest.approx(kl, rel=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    # gradient w.r.t. logp of the unclipped term -A r is -A r; zero on clipped and dual-clipped tokens
    (loss * MASK).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1, 0, -0.5, 0], [0, 3.0, 0, 0]], dtype=F64))


@pytest.mark.parametrize("c", [None, math.inf])
def test_ppo_clip_dual_clip_disabled(c):
    logp, old = _logps(RATIOS)
    loss, m = ppo_clip_loss(logp, old, ADV, MASK, dual_clip_c=c)
    assert loss[1, 2].item() == pytest.approx(24.0)  # -A r = 2 * 12, no cap
    assert m["actor/dual_clipfrac"].item() == 0.0


def test_ppo_clip_rejects_dual_clip_below_one():
    logp, old = _logps(RATIOS)
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip_loss(logp, old, ADV, MASK, dual_clip_c=0.9)


def test_ppo_clip_symmetric_eps_and_token_advantages():
    logp, old = _logps(RATIOS)
    # eps_low = eps_high = 0.2: r=1.5 with A=+1 -> -1.2; (N, T) advantages give the same as (N,)
    loss, _ = ppo_clip_loss(logp, old, ADV, MASK, eps_high=0.2)
    assert loss[0, 1].item() == pytest.approx(-1.2)
    loss_t, _ = ppo_clip_loss(logp, old, ADV[:, None].expand(2, 4).clone(), MASK, eps_high=0.2)
    torch.testing.assert_close(loss_t, loss)


def test_clip_indicator_hand_computed():
    ratio = torch.tensor(RATIOS, dtype=F64)
    ind = clip_indicator(ratio, ADV, 0.2, 0.28)
    # row 0 (A>0): only r=1.5 (> 1.28) and the padded 100 are clipped; row 1 (A<0): only r=0.5 (< 0.8).
    # The dual clip (r=12) is not part of I_clip.
    assert ind.tolist() == [[1, 0, 1, 0], [0, 1, 1, 1]]
    assert ind.dtype == F64
    assert clip_indicator(ratio, torch.zeros(2), 0.2, 0.28).eq(1).all()  # A = 0 is never clipped


def test_log_ratio_is_clamped_before_exp():
    logp = torch.tensor([[30.0]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    loss, m = kl_cov_loss(logp, old, torch.tensor([1.0], dtype=F64), torch.ones(1, 1), kl_cov_ratio=1e-9)
    # the selected token: -exp(20) + |30 - 0|; without the clamp it would be -exp(30) + 30
    assert loss.item() == pytest.approx(-math.exp(20) + 30.0)
    assert m["actor/ratio_mean"].item() == pytest.approx(math.exp(20), rel=1e-6)


# ------------------------------------------------------------------------------------------- keyword checks
@pytest.mark.parametrize(
    ("name", "bad"),
    [("ppo_clip", "clip_ratio"), ("ppo_clip", "kl_coef"), ("clip_cov", "kl_cov_ratio"), ("kl_cov", "cov_ub")],
)
def test_unknown_keywords_are_rejected(name, bad):
    logp, old = _logps(RATIOS)
    with pytest.raises(TypeError, match=rf"{name}.*{bad}.*eps_low"):
        POLICY_LOSSES.get(name)(logp, old, ADV, MASK, **{bad: 0.1})


@pytest.mark.parametrize("name", ["ppo_clip", "clip_cov", "kl_cov"])
def test_common_keywords_accepted_by_every_loss(name):
    logp, old = _logps(RATIOS)
    loss, _ = POLICY_LOSSES.get(name)(
        logp, old, ADV, MASK, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, generator=torch.Generator()
    )
    assert loss.shape == (2, 4)


def test_shape_errors():
    logp, old = _logps(RATIOS)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_clip_loss(logp, old[:, :3], ADV, MASK)
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(logp, old, torch.ones(3), MASK)


# ------------------------------------------------------------------------------------------- clip_cov
def _cov_case(old_shift=0.0):
    """2 valid tokens per row plus a padded column whose values would be in the covariance band.

    A = (+3, -3) per row; logp row 0 = (-1, -3), row 1 = (-3, -1); valid means: A 0, logp -2.
    cov = 3*(+1) = 3, 3*(-1) = -3 / -3*(-1) = 3, -3*(+1) = -3: tokens (0,0) and (1,0) are in (1, 5).
    """
    logp = torch.tensor([[-1.0, -3.0, -50.0], [-3.0, -1.0, 50.0]], dtype=F64, requires_grad=True)
    old = logp.detach().clone()
    old[1, 0] += old_shift  # ratio exp(-old_shift) at (1, 0)
    adv = torch.tensor([3.0, -3.0], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=F64)
    return logp, old, adv, mask


def test_clip_cov_hand_computed_detaches_band_tokens():
    logp, old, adv, mask = _cov_case()
    # n_valid = 4, clip_ratio 0.5 -> k = max(1, floor(2)) = 2: both band tokens are detached
    loss, m = clip_cov_loss(logp, old, adv, mask, clip_ratio=0.5)
    assert m["actor/clipcov_frac"].item() == pytest.approx(2 / 4)
    # values equal ppo_clip's (r = 1): -A
    torch.testing.assert_close(loss[:, :2], torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=F64))
    (loss * mask).sum().backward()
    # d(-A r)/dlogp = -A r: -3 at (0,1), +3 at (1,1); 0 at the detached (0,0), (1,0) and the padding
    torch.testing.assert_close(logp.grad, torch.tensor([[0, -3.0, 0], [0, 3.0, 0]], dtype=F64))


def test_clip_cov_skips_already_clipped_tokens():
    # (1,0) now has A < 0 and r = exp(-1) < 0.8: clipped by PPO, so only (0,0) remains a candidate
    logp, old, adv, mask = _cov_case(old_shift=1.0)
    _, m = clip_cov_loss(logp, old, adv, mask, clip_ratio=0.5)
    assert m["actor/clipcov_frac"].item() == pytest.approx(1 / 4)
    assert m["actor/clipfrac_lower"].item() == pytest.approx(1 / 4)


def test_clip_cov_band_bounds_are_exclusive_and_configurable():
    logp, old, adv, mask = _cov_case()
    _, m = clip_cov_loss(logp, old, adv, mask, clip_ratio=0.5, cov_lb=3.0)  # cov = 3 is not > 3
    assert m["actor/clipcov_frac"].item() == 0.0
    _, m = clip_cov_loss(logp, old, adv, mask, clip_ratio=0.5, cov_lb=-4.0, cov_ub=4.0)  # all four qualify
    assert m["actor/clipcov_frac"].item() == pytest.approx(2 / 4)  # k = 2 still caps the count


def test_clip_cov_picks_uniformly_among_candidates():
    # k = max(1, floor(0.1 * 4)) = 1 of the 2 band tokens, drawn with the generator
    counts = torch.zeros(2)
    for seed in range(200):
        logp, old, adv, mask = _cov_case()
        loss, _ = clip_cov_loss(logp, old, adv, mask, clip_ratio=0.1, generator=torch.Generator().manual_seed(seed))
        (loss * mask).sum().backward()
        zero = logp.grad[:, 0] == 0  # which of (0,0), (1,0) lost its gradient
        assert zero.sum() == 1
        counts += zero.double()
    assert 60 < counts[0] < 140 and 60 < counts[1] < 140


def _random_batch(seed, n=16, t=32):
    gen = torch.Generator().manual_seed(seed)
    logp = (-2.0 + 1.5 * torch.randn(n, t, generator=gen, dtype=F64)).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(n, t, generator=gen, dtype=F64)
    adv = 2.0 * torch.randn(n, generator=gen, dtype=F64)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(F64)
    return logp, old, adv, mask


def _detached_tokens(seed, gen_seed, clip_ratio):
    logp, old, adv, mask = _random_batch(seed)
    gen = torch.Generator().manual_seed(gen_seed)
    loss, m = clip_cov_loss(logp, old, adv, mask, clip_ratio=clip_ratio, generator=gen, dual_clip_c=None)
    (loss * mask).sum().backward()
    with torch.no_grad():
        ratio = torch.exp(logp - old)
        live = mask.bool() & clip_indicator(ratio, adv, 0.2, 0.28).bool()  # tokens ppo_clip gives a gradient
        # Cui et al.'s covariance, computed here independently over the valid tokens
        a = adv[:, None].expand_as(logp)[mask.bool()]
        lp = logp[mask.bool()]
        cov = torch.zeros_like(logp)
        cov[mask.bool()] = (a - a.mean()) * (lp - lp.mean())
    return (logp.grad == 0) & live, live & (cov > 1) & (cov < 5), int(mask.sum()), loss, m


def test_clip_cov_seeded_is_reproducible_and_detaches_exactly_k():
    clip_ratio = 0.02
    chosen1, band, n_valid, loss1, m1 = _detached_tokens(seed=1, gen_seed=7, clip_ratio=clip_ratio)
    chosen2, _, _, loss2, m2 = _detached_tokens(seed=1, gen_seed=7, clip_ratio=clip_ratio)
    chosen3, _, _, _, _ = _detached_tokens(seed=1, gen_seed=8, clip_ratio=clip_ratio)
    k = max(1, math.floor(clip_ratio * n_valid))
    assert band.sum() > k  # enough candidates that the draw matters
    assert chosen1.sum() == k  # exactly k tokens lost their gradient ...
    assert not (chosen1 & ~band).any()  # ... all of them inside the covariance band
    assert torch.equal(chosen1, chosen2)  # same generator seed, same tokens
    assert not torch.equal(chosen1, chosen3)  # another seed draws other tokens
    assert m1["actor/clipcov_frac"].item() == pytest.approx(k / n_valid)
    # detaching keeps the loss values: they equal ppo_clip's
    logp, old, adv, mask = _random_batch(1)
    ref, _ = ppo_clip_loss(logp, old, adv, mask, dual_clip_c=None)
    torch.testing.assert_close(loss1, ref)


# ------------------------------------------------------------------------------------------- kl_cov
def _kl_case():
    # A = (+3, -3); logp row 0 (-1, -3), row 1 (-3.5, -0.5); valid means: A 0, logp -2.
    # cov: 3*1 = 3, 3*(-1) = -3 / -3*(-1.5) = 4.5, -3*1.5 = -4.5 -> ranking (1,0) > (0,0) > others
    logp = torch.tensor([[-1.0, -3.0, 9.0], [-3.5, -0.5, 9.0]], dtype=F64, requires_grad=True)
    old = logp.detach() - 0.1  # r = exp(0.1) everywhere
    adv = torch.tensor([3.0, -3.0], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=F64)
    return logp, old, adv, mask


@pytest.mark.parametrize(("ratio", "chosen"), [(0.25, [(1, 0)]), (0.5, [(1, 0), (0, 0)])])
def test_kl_cov_hand_computed(ratio, chosen):
    logp, old, adv, mask = _kl_case()
    r = math.exp(0.1)
    loss, m = kl_cov_loss(logp, old, adv, mask, kl_cov_ratio=ratio, kl_coef=2.0)
    # k = max(1, floor(ratio * 4)); chosen tokens: -A r + 2 * |0.1|; others -A r (no clipping)
    expected = torch.tensor([[-3 * r, -3 * r], [3 * r, 3 * r]], dtype=F64)
    grad = expected.clone()  # d(-A r)/dlogp = -A r
    for i, j in chosen:
        expected[i, j] += 2 * 0.1
        grad[i, j] += 2.0  # d(2 |logp - old|)/dlogp = 2 sign(0.1)
    torch.testing.assert_close(loss[:, :2], expected)
    assert m["actor/klcov_frac"].item() == pytest.approx(len(chosen) / 4)
    (loss * mask).sum().backward()
    torch.testing.assert_close(logp.grad[:, :2], grad)


def test_kl_cov_has_no_ratio_clipping_and_is_inert_on_policy():
    logp, old = _logps([[1.5]])
    loss, _ = kl_cov_loss(logp, old, torch.tensor([1.0], dtype=F64), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.5 + math.log(1.5))  # ppo_clip would give -1.28
    # on-policy (old = logp): the penalty and its gradient vanish, the gradient is that of -A r
    logp, old, adv, mask = _random_batch(3)
    loss, _ = kl_cov_loss(logp, logp.detach(), adv, mask, kl_cov_ratio=0.5)
    (g,) = torch.autograd.grad((loss * mask).sum(), logp)
    torch.testing.assert_close(g, -adv[:, None].expand_as(g) * mask)


# ------------------------------------------------------------------------------------------- entropy, KL
def test_entropy_bonus_hand_computed():
    h = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = entropy_bonus(h, 0.01)
    torch.testing.assert_close(out, torch.tensor([[-0.01, -0.02]]))
    out.sum().backward()
    torch.testing.assert_close(h.grad, torch.full((1, 2), -0.01))


def test_kl_penalty_hand_computed():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))  # log 0.5 - log 0.25
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    # k3: ref - logp = -log 2; exp(-log 2) = 0.5; 0.5 + log 2 - 1
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1, rel=1e-6)
    with pytest.raises(KeyError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


@settings(max_examples=50, deadline=None)
@given(x=st.floats(-30, 30), y=st.floats(-30, 30), kind=st.sampled_from(["k2", "k3"]))
def test_k2_k3_nonnegative_and_zero_at_equality(x, y, kind):
    logp, ref = torch.tensor([[x]], dtype=F64), torch.tensor([[y]], dtype=F64)
    assert kl_penalty(logp, ref, kind).item() >= 0
    assert kl_penalty(logp, logp, kind).item() == 0


# ------------------------------------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dual=st.sampled_from([None, 10.0, 2.0]), eps_high=st.sampled_from([0.2, 0.28]))
def test_ppo_clip_gradient_zero_exactly_where_clipped(seed, dual, eps_high):
    gen = torch.Generator().manual_seed(seed)
    logp = torch.randn(4, 6, generator=gen, dtype=F64).requires_grad_(True)
    old = logp.detach() + torch.randn(4, 6, generator=gen, dtype=F64)  # |log-ratio| mostly < 3
    adv = torch.randn(4, generator=gen, dtype=F64)
    adv[0] = 0.0  # A = 0 tokens have no gradient either
    mask = (torch.rand(4, 6, generator=gen) < 0.7).to(F64)
    loss, _ = ppo_clip_loss(logp, old, adv, mask, eps_high=eps_high, dual_clip_c=dual)
    (g,) = torch.autograd.grad(aggregate(loss, mask, "token-mean"), logp)
    ratio = torch.exp(logp.detach() - old)
    a = adv[:, None].expand_as(ratio)
    dual_clipped = (a < 0) & (ratio > dual) if dual is not None else torch.zeros_like(mask, dtype=torch.bool)
    expect_zero = (clip_indicator(ratio, adv, 0.2, eps_high) == 0) | (a == 0) | dual_clipped | ~mask.bool()
    assert torch.equal(g == 0, expect_zero)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(["ppo_clip", "clip_cov", "kl_cov"]))
def test_padded_values_never_change_loss_or_metrics(seed, name):
    logp, old, adv, mask = _random_batch(seed, n=6, t=10)
    adv_t = adv[:, None].expand(6, 10).clone()  # (N, T) advantages, so padding can be polluted too
    gen = torch.Generator().manual_seed(seed)
    pad = ~mask.bool()
    dirty = [x.detach().clone() for x in (logp, old, adv_t)]
    for x in dirty:
        x[pad] = 1e3 * torch.randn(int(pad.sum()), generator=gen, dtype=F64)
    kw = {"clip_ratio": 0.05, "cov_lb": 0.0, "cov_ub": 50.0} if name == "clip_cov" else {}
    fn = POLICY_LOSSES.get(name)
    clean_loss, clean_m = fn(logp.detach(), old, adv_t, mask, generator=torch.Generator().manual_seed(0), **kw)
    dirty_loss, dirty_m = fn(*dirty, mask, generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(dirty_loss[mask.bool()], clean_loss[mask.bool()])
    for mode in ["token-mean", "seq-mean-token-mean"]:
        assert aggregate(dirty_loss, mask, mode).item() == pytest.approx(aggregate(clean_loss, mask, mode).item())
    assert clean_m.keys() == dirty_m.keys()
    for key in clean_m:
        assert dirty_m[key].item() == pytest.approx(clean_m[key].item(), rel=1e-6, abs=1e-9), key
