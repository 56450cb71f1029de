"""Theorem 1 under its own assumption: in a tabular softmax policy where only the sampled logit moves, the realized
entropy change of one SGD step equals (eta / L) * Omega_first_order up to O(eta^2)."""

import pytest
import torch

from steer.tabular import random_tabular_problem, tabular_step

pytestmark = pytest.mark.unit


def _relative_error(step) -> float:
    predicted = step.scale * step.omega_first_order
    return float((step.realized - predicted).abs().max() / predicted.abs().max())


def test_first_order_error_shrinks_linearly_with_the_step_size():
    cur, old, actions, adv = random_tabular_problem(64, 12, seed=0)
    etas = [6.4, 3.2, 1.6, 0.8, 0.4]  # eta / L from 0.1 down to 0.00625
    errors = [_relative_error(tabular_step(cur, old, actions, adv, eta=eta)) for eta in etas]
    print("eta, relative error of (eta/L) Omega:", list(zip(etas, [f"{e:.2e}" for e in errors], strict=True)))
    ratios = [b / a for a, b in zip(errors, errors[1:], strict=False)]
    # O(eta^2) remainder over an O(eta) change: halving eta halves the relative error
    assert all(0.4 < r < 0.6 for r in ratios), ratios
    assert errors[-1] < 0.01


def test_clipped_tokens_neither_move_nor_are_predicted_to():
    cur, old, actions, adv = random_tabular_problem(32, 8, seed=1, drift=1.0)  # large drift: many ratios clipped
    step = tabular_step(cur, old, actions, adv, eta=1.0)
    ratio = (
        torch.log_softmax(cur, -1).gather(-1, actions[:, None])
        - torch.log_softmax(old, -1).gather(-1, actions[:, None])
    ).exp()[:, 0]
    clipped = ((adv > 0) & (ratio > 1.28)) | ((adv < 0) & (ratio < 0.8))
    assert clipped.sum() >= 3, "the problem should contain clipped tokens"
    assert (step.realized[clipped] == 0).all()
    assert (step.omega_first_order[clipped] == 0).all()
    assert (step.omega_first_order[~clipped] != 0).all()


def test_sign_of_the_prediction_matches_the_realized_change():
    cur, old, actions, adv = random_tabular_problem(200, 16, seed=2)
    step = tabular_step(cur, old, actions, adv, eta=0.5)
    moved = step.omega_first_order.abs() > 1e-6
    assert (torch.sign(step.realized[moved]) == torch.sign(step.omega_first_order[moved])).all()
