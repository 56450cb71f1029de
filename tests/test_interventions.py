"""Fork tokens, entropy-aware advantage and W-REINFORCE: hand-computed cases and properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.advantages import compute_advantages
from steer.interventions import (
    ADVANTAGE_SHAPINGS,
    TOKEN_WEIGHTINGS,
    entropy_aware_advantages,
    fork_token_weights,
)
from steer.losses import POLICY_LOSSES

pytestmark = pytest.mark.unit


def test_fork_tokens_keep_the_top_fifth_by_entropy():
    h = torch.tensor([[0.1, 2.0, 0.3, 0.9, 9.0], [1.5, 0.2, 0.0, 0.4, 0.5]])
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])  # 9 valid tokens; 9.0 is padding
    w = fork_token_weights(h, mask, top_rho=0.2)  # k = ceil(1.8) = 2 -> entropies 2.0 and 1.5
    assert w.tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert TOKEN_WEIGHTINGS.get("fork_tokens") is fork_token_weights
    with pytest.raises(ValueError, match="top_rho"):
        fork_token_weights(h, mask, top_rho=0.0)


def test_fork_tokens_stop_the_gradient_of_low_entropy_tokens():
    logits = torch.randn(2, 6, requires_grad=True)
    h = torch.arange(12.0).reshape(2, 6)
    w = fork_token_weights(h, torch.ones(2, 6), top_rho=0.25)  # k = 3: the last three tokens of row 1
    (w * logits).sum().backward()
    assert logits.grad.eq(w).all() and w.sum() == 3


def test_entropy_aware_advantage_hand_computed():
    adv = torch.tensor([1.0, -1.0, 0.0])
    h = torch.tensor([[0.5, 3.0], [0.5, 3.0], [0.5, 3.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    got = entropy_aware_advantages(adv, h, mask, alpha=0.4, kappa=2.0)
    # bonus = min(0.4 H, |A| / 2): 0.2 and min(1.2, 0.5) = 0.5; for A = 0 the clip gives 0
    expected = torch.tensor([[1.2, 1.5], [-0.8, -0.5], [0.0, 0.0]])
    assert torch.allclose(got, expected)
    assert ADVANTAGE_SHAPINGS.get("entropy_aware") is entropy_aware_advantages


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), kappa=st.floats(1.01, 10.0))
def test_entropy_aware_advantage_never_flips_a_sign(seed, kappa):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(5, generator=g)
    h = torch.rand(5, 7, generator=g) * 5
    shaped = entropy_aware_advantages(adv, h, torch.ones(5, 7), kappa=kappa)
    assert (torch.sign(shaped) == torch.sign(adv)[:, None]).all()
    assert (shaped >= adv[:, None]).all()


def test_w_reinforce_down_weights_positive_samples_only():
    r = torch.tensor([1.0, -1.0, 0.0, 1.0])
    adv = compute_advantages(r, torch.tensor([0, 0, 1, 1]), estimator="w_reinforce")
    assert adv.tolist() == pytest.approx([0.1, -1.0, 0.0, 0.1])


def test_reinforce_loss_gradient_is_minus_advantage_times_grad_logp_on_policy():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_(True)
    loss, _ = POLICY_LOSSES.get("reinforce")(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0, -2.0]]))  # d(-A r)/dlogp = -A r = -A at r = 1
