"""STEER estimator and weights: hand-computed cases, properties, and masking."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.reweighting import (
    OMEGA_FORMS,
    P_OLD_FLOOR,
    WEIGHT_MAPS,
    estimate_entropy_change,
    omega_abs_max,
    quadrant_stats,
    steer_weights,
    steer_weights_asymmetric,
    steer_weights_linear,
    token_weights,
    update_running_max,
    weight_stats,
)

pytestmark = pytest.mark.unit


def test_first_order_omega_hand_computed():
    # one token: p = 0.5, p_old = 0.25 (r = 2 -> clipped for A > 0 at eps_high = 0.28), H = 1.0
    logp = torch.tensor([[math.log(0.5)]])
    old = torch.tensor([[math.log(0.25)]])
    h = torch.tensor([[1.0]])
    mask = torch.ones(1, 1)
    # A > 0 and r = 2 > 1.28: the clipped branch is active, I_clip = 0 -> Omega = 0
    assert estimate_entropy_change(logp, old, h, torch.tensor([1.0]), mask).item() == 0.0
    # A < 0 and r = 2: not clipped. Omega = -A r p (1-p)(log p + H) = 1 * 2 * 0.25 * (ln 0.5 + 1)
    expected = 2 * 0.25 * (math.log(0.5) + 1.0)
    got = estimate_entropy_change(logp, old, h, torch.tensor([-1.0]), mask).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_released_omega_hand_computed():
    # Omega = -(A / p_old) p (1-p)(log p + H_old); no clip indicator even where PPO clips
    logp = torch.tensor([[math.log(0.5)]])
    old = torch.tensor([[math.log(0.25)]])
    h_old = torch.tensor([[0.3]])
    got = estimate_entropy_change(logp, old, h_old, torch.tensor([1.0]), torch.ones(1, 1), form="released")
    expected = -(1.0 / 0.25) * 0.25 * (math.log(0.5) + 0.3)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_released_omega_clamps_p_old_at_its_floor():
    # Omega = -(A / max(p_old, 1e-6)) p (1-p)(log p + H_old): p_old = 1e-9 and p_old = 0 (log -inf) both divide by
    # 1e-6; p_old = 2e-6, above the floor, is unchanged
    logp = torch.full((1, 3), math.log(0.5))
    old = torch.tensor([[math.log(1e-9), -math.inf, math.log(2e-6)]])
    h_old = torch.full((1, 3), 0.3)
    got = estimate_entropy_change(logp, old, h_old, torch.tensor([1.0]), torch.ones(1, 3), form="released")
    core = 0.25 * (math.log(0.5) + 0.3)  # p (1-p)(log p + H_old) at p = 0.5
    assert P_OLD_FLOOR == 1e-6
    assert got[0].tolist() == pytest.approx([-core / 1e-6, -core / 1e-6, -core / 2e-6], rel=1e-5)
    assert torch.isfinite(got).all()


def test_sign_follows_the_four_quadrants():
    # high-probability token (log p > -H) with A > 0 lowers entropy; low-probability raises it; A < 0 flips both
    logp = torch.tensor([[math.log(0.9), math.log(0.05)]])
    h = torch.tensor([[0.5, 0.5]])
    mask = torch.ones(1, 2)
    pos = estimate_entropy_change(logp, logp, h, torch.tensor([1.0]), mask)
    neg = estimate_entropy_change(logp, logp, h, torch.tensor([-1.0]), mask)
    assert pos[0, 0] < 0 and pos[0, 1] > 0
    assert neg[0, 0] > 0 and neg[0, 1] < 0
    stats = quadrant_stats(pos, logp, h, torch.tensor([1.0]), mask)
    assert stats["steer/quadrant/pos_high/share"] == 0.5 and stats["steer/quadrant/pos_low/share"] == 0.5
    assert stats["steer/quadrant/neg_high/share"] == 0.0
    assert stats["steer/quadrant/pos_high/omega_sum"] == pytest.approx(pos[0, 0].item())


def test_omega_is_zero_on_padding_even_with_garbage_there():
    logp = torch.tensor([[-0.1, float("-inf")]])
    old = torch.tensor([[-0.2, float("nan")]])
    h = torch.tensor([[0.4, float("nan")]])
    mask = torch.tensor([[1.0, 0.0]])
    for form in OMEGA_FORMS:
        omega = estimate_entropy_change(logp, old, h, torch.tensor([1.0]), mask, form=form)
        assert omega[0, 1] == 0.0 and torch.isfinite(omega).all()


def test_per_token_advantages_equal_broadcast_per_response():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g) * 3
    old = logp + 0.1 * torch.randn(3, 5, generator=g)
    h = torch.rand(3, 5, generator=g)
    adv = torch.randn(3, generator=g)
    mask = torch.ones(3, 5)
    a = estimate_entropy_change(logp, old, h, adv, mask)
    b = estimate_entropy_change(logp, old, h, adv[:, None].expand(3, 5), mask)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="advantages"):
        estimate_entropy_change(logp, old, h, torch.randn(3, 4), mask)


def test_weights_hand_computed():
    omega = torch.tensor([[0.0, -0.5, 1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 7.0 is padding: it must not set the maximum
    w = steer_weights(omega, mask, lambda_min=0.7)
    assert w[0, 0] == 1.0
    assert w[0, 1].item() == pytest.approx(0.7**0.5, rel=1e-6)
    assert w[0, 2] == torch.tensor(0.7)  # exactly lambda_min (in the tensor dtype) at the maximum
    assert w[0, 3] == 1.0


def test_floor_and_external_normaliser():
    omega = torch.tensor([[0.01, 0.005]])
    mask = torch.ones(1, 2)
    # M = max(0.01, floor 0.02) = 0.02 -> w = 0.7 ** 0.5 and 0.7 ** 0.25
    w = steer_weights(omega, mask, lambda_min=0.7, floor=0.02)
    assert torch.allclose(w, torch.tensor([[0.7**0.5, 0.7**0.25]]))
    # a wider scope's M given by the caller
    w = steer_weights(omega, mask, lambda_min=0.7, max_abs=0.04)
    assert torch.allclose(w, torch.tensor([[0.7**0.25, 0.7**0.125]]))
    assert torch.equal(steer_weights(torch.zeros(2, 3), torch.ones(2, 3), lambda_min=0.7), torch.ones(2, 3))


def test_running_max():
    m = update_running_max(None, torch.tensor(2.0))
    m = update_running_max(m, torch.tensor(1.0), decay=0.9)
    assert m.item() == pytest.approx(1.8)
    m = update_running_max(m, torch.tensor(3.0), decay=0.9)
    assert m.item() == pytest.approx(3.0)


def test_linear_and_asymmetric_variants():
    omega = torch.tensor([[0.0, -1.0, 0.5, 1.0]])
    mask = torch.ones(1, 4)
    lin = steer_weights_linear(omega, mask)
    assert torch.allclose(lin, torch.tensor([[1.2, 0.8, 1.0, 0.8]]))
    asym = steer_weights_asymmetric(omega, mask, lambda_min=0.5)
    # only the entropy-lowering token (Omega < 0) is damped
    assert torch.allclose(asym, torch.tensor([[1.0, 0.5, 1.0, 1.0]]))
    assert torch.equal(token_weights("exp", omega, mask, lambda_min=0.5), steer_weights(omega, mask, lambda_min=0.5))
    with pytest.raises(KeyError, match="asymmetric, exp, linear"):
        token_weights("expo", omega, mask)
    assert set(WEIGHT_MAPS) == {"exp", "linear", "asymmetric"}


def test_bad_lambda_min_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="lambda_min"):
        steer_weights(torch.ones(1, 1), torch.ones(1, 1), lambda_min=0.0)


def test_weight_stats():
    omega = torch.tensor([[1.0, -2.0, 5.0]])
    w = torch.tensor([[0.9, 0.8, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = weight_stats(omega, w, mask)
    assert s["steer/omega_abs_max"] == 2.0
    assert s["steer/weight_mean"].item() == pytest.approx(0.85)
    assert s["steer/omega_pos_frac"] == 0.5


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 4),
    t=st.integers(1, 6),
    lam=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
    form=st.sampled_from(["first_order", "released"]),
)
def test_weight_properties(n, t, lam, seed, form):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g) * 5
    old = logp + 0.3 * torch.randn(n, t, generator=g)
    h = torch.rand(n, t, generator=g) * 3
    adv = torch.randn(n, generator=g)
    mask = (torch.rand(n, t, generator=g) > 0.3).float()
    omega = estimate_entropy_change(logp, old, h, adv, mask, form=form)
    w = steer_weights(omega, mask, lambda_min=lam)
    assert w.shape == (n, t) and not w.requires_grad
    valid = mask.bool()
    assert (w[valid] >= lam).all() and (w[valid] <= 1).all()
    assert (w[~valid] == 1).all()
    m = omega_abs_max(omega, mask)
    if m > 0:
        assert w[valid & (omega.abs() == m)].eq(lam).all()
    # monotone: larger |Omega| never gets a larger weight
    o, ww = omega[valid].abs(), w[valid]
    order = o.argsort()
    assert (ww[order].diff() <= 1e-7).all()
