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


def test_registry_holds_the_scopes():
    assert NORMALISERS.names() == ["group", "group_quantile", "micro", "mini", "rollout", "running"]


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


def test_running_keeps_a_decayed_maximum_over_groups_and_restarts_per_rollout():
    n = NORMALISERS.get("running")(omega, decay=0.5, group=2)
    big, small = batch([4.0, 0.0]), batch([1.0, 0.0])
    no_forward = lambda: pytest.fail("micro-batches of whole groups need no forward")  # noqa: E731
    n.start(big)
    n.before_step(big, no_forward)
    assert torch.allclose(n.for_micro(big, big.old_logp, big.old_entropy), torch.tensor([[6.0], [6.0]]))  # 4 * 1.5
    n.before_step(small, no_forward)
    assert torch.allclose(n.for_micro(small, small.old_logp, small.old_entropy), torch.tensor([[3.0], [3.0]]))
    n.start(big)  # a new rollout starts afresh: max(1.5), not max(1.5, 0.5 * 3)
    n.before_step(small, no_forward)
    assert torch.allclose(n.for_micro(small, small.old_logp, small.old_entropy), torch.tensor([[1.5], [1.5]]))


def test_group_normaliser_of_a_straddling_micro_batch_scores_the_mini_batch_once():
    n = NORMALISERS.get("group")(omega, group=2)
    b = batch([1.0, -2.0])
    calls = []
    n.start(b)
    n.before_step(b, lambda: calls.append(1) or (torch.full((2, 3), -1.0), torch.full((2, 3), 4.0)))  # |A| * 3
    first, second = b.select(torch.tensor([0])), b.select(torch.tensor([1]))
    assert torch.allclose(n.for_micro(first, first.old_logp, first.old_entropy), torch.tensor([[6.0]]))
    assert torch.allclose(n.for_micro(second, second.old_logp, second.old_entropy), torch.tensor([[6.0]]))
    assert calls == [1]


def test_group_quantile_normalises_by_a_quantile_of_the_group_by_hand():
    from steer.reweighting import steer_weights

    n = NORMALISERS.get("group_quantile")(omega, group=2, quantile=0.5)
    b = batch([1.0, -2.0])  # |Omega| on valid tokens: row 0: 0.5, 1.5; row 1: 2 * 0.5 = 1.0 -> median 1.0
    n.start(b)
    n.before_step(b, lambda: pytest.fail("a micro-batch of whole groups needs no forward"))
    m = n.for_micro(b, b.old_logp, b.old_entropy)
    assert torch.allclose(m, torch.tensor([[1.0], [1.0]]))
    w = steer_weights(omega(b.old_logp, b.old_logp, b.old_entropy, b.old_entropy, b.advantages, b.response_mask),
                      b.response_mask, lambda_min=0.5, max_abs=m)  # fmt: skip
    # 0.5 ** (0.5 / 1) on the token below M; the token above M (1.5) and the one at M both get lambda_min
    assert torch.allclose(w, torch.tensor([[0.5**0.5, 0.5, 1.0], [0.5, 1.0, 1.0]]))


def test_policy_update_compares_no_config_string():
    source = inspect.getsource(policy_update)
    assert '== "' not in source and "cfg." not in source
