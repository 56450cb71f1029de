"""STEER's normalisers (steer.normalisers): each strategy's M on hand-made tensors, and the loop's independence."""

import inspect

import pytest
import torch

from steer.batch import PolicyBatch
from steer.normalisers import NORMALISERS
from steer.update import policy_update

pytestmark = pytest.mark.unit


def omega(logp, old_logp, entropy, old_entropy, advantages, mask):
    """A stand-in Omega (N, T): A * (logp + entropy) on valid tokens, so M is easy to compute by hand."""
    return advantages[:, None] * (logp + entropy) * mask


def batch(adv) -> PolicyBatch:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # (N=2, T=3)
    old_logp = torch.tensor([[-1.0, -2.0, -50.0], [-0.5, -50.0, -50.0]])
    old_entropy = torch.tensor([[0.5, 0.5, 9.0], [1.0, 9.0, 9.0]])
    ids = torch.zeros(2, 4, dtype=torch.long)
    return PolicyBatch(ids, torch.ones_like(ids), mask, torch.tensor(adv), old_logp, old_entropy)


def test_registry_holds_the_four_scopes():
    assert NORMALISERS.names() == ["micro", "mini", "rollout", "running"]


def test_micro_leaves_m_to_the_micro_batch():
    n = NORMALISERS.get("micro")(omega)
    b = batch([1.0, -2.0])
    n.start(b)
    n.before_step(b, lambda: pytest.fail("micro needs no forward"))
    assert n.for_micro(b, b.old_logp, b.old_entropy) is None


def test_rollout_takes_the_max_at_the_rollout_policy_once():
    n = NORMALISERS.get("rollout")(omega)
    b = batch([1.0, -2.0])
    n.start(b)  # |A (logp + H)|: row 0: 0.5, 1.5; row 1: 2 * 0.5 = 1.0 (padding ignored)
    n.before_step(b, lambda: pytest.fail("rollout needs no forward"))
    assert n.for_micro(b, b.old_logp + 10, b.old_entropy) == pytest.approx(1.5)


def test_mini_takes_the_max_at_the_steps_parameters():
    n = NORMALISERS.get("mini")(omega)
    b = batch([1.0, -2.0])
    n.start(b)
    n.before_step(b, lambda: (torch.full((2, 3), -1.0), torch.full((2, 3), 4.0)))  # A * 3 -> max 6
    assert n.for_micro(b, b.old_logp, b.old_entropy) == pytest.approx(6.0)


def test_running_keeps_a_decayed_maximum_over_micro_batches():
    n = NORMALISERS.get("running")(omega, decay=0.5)
    big, small = batch([4.0, 0.0]), batch([1.0, 0.0])
    n.start(big)
    assert n.for_micro(big, big.old_logp, big.old_entropy) == pytest.approx(6.0)  # 4 * 1.5
    assert n.for_micro(small, small.old_logp, small.old_entropy) == pytest.approx(3.0)  # max(1.5, 0.5 * 6)
    n.start(big)  # a new rollout starts afresh
    assert n.for_micro(small, small.old_logp, small.old_entropy) == pytest.approx(1.5)


def test_policy_update_compares_no_config_string():
    source = inspect.getsource(policy_update)
    assert '== "' not in source and "cfg." not in source
