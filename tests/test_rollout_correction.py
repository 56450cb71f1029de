"""Rollout correction (TIS / MIS): hand-computed weights and masks at the token, sequence and geometric levels, and
with C = inf on an on-policy batch the objective and a whole update equal the uncorrected ones bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from steer.algorithms import get_algorithm
from steer.config import ConfigError, load_config
from steer.objective import build_objective
from steer.rollout_correction import ROLLOUT_CORRECTIONS, rollout_correction_weights
from steer.update import policy_update
from tests.test_update import scored, tiny_batch, tiny_model

pytestmark = pytest.mark.unit

F64 = torch.float64
# rho = pi_old / pi_sampler per token; the 4th column is padding (its ratio 100 must not count)
RHO = [[1.8, 0.3, 1.0, 100.0], [1.5, 4.0, 0.6, 100.0]]
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]], dtype=F64)


def _logps(rho):
    sampling = torch.full((2, 4), -1.0, dtype=F64)
    return sampling + torch.tensor(rho, dtype=F64).log(), sampling  # old_logp, sampling_logp


def _weights(mode, level, c=2.0):
    old, samp = _logps(RHO)
    return rollout_correction_weights(old, samp, MASK, mode=mode, level=level, threshold=c)


def test_registry_holds_both_modes():
    assert ROLLOUT_CORRECTIONS.names() == ["mask", "truncate"]


def test_token_level_tis_caps_the_ratio_at_c():
    w, m = _weights("truncate", "token")
    torch.testing.assert_close(w, torch.tensor([[1.8, 0.3, 1.0, 1.0], [1.5, 2.0, 0.6, 1.0]], dtype=F64))
    assert m["actor/rollout_is_truncated_frac"].item() == pytest.approx(1 / 6)  # only rho = 4 > C
    assert m["actor/rollout_is_weight_mean"].item() == pytest.approx((1.8 + 0.3 + 1 + 1.5 + 2 + 0.6) / 6)
    assert m["actor/rollout_is_ratio_mean"].item() == pytest.approx((1.8 + 0.3 + 1 + 1.5 + 4 + 0.6) / 6)


def test_token_level_mis_drops_ratios_outside_the_interval_and_corrects_the_others():
    w, m = _weights("mask", "token")
    # 0.3 < 1/2 and 4 > 2 are dropped; the others keep their ratio as the weight
    torch.testing.assert_close(w, torch.tensor([[1.8, 0.0, 1.0, 1.0], [1.5, 0.0, 0.6, 1.0]], dtype=F64))
    assert m["actor/rollout_is_masked_frac"].item() == pytest.approx(2 / 6)


def test_sequence_level_uses_the_product_of_the_token_ratios():
    # row 0: 1.8 * 0.3 * 1 = 0.54; row 1: 1.5 * 4 * 0.6 = 3.6
    w, m = _weights("truncate", "sequence")
    torch.testing.assert_close(w, torch.tensor([[0.54, 0.54, 0.54, 1.0], [2.0, 2.0, 2.0, 1.0]], dtype=F64))
    assert m["actor/rollout_is_truncated_frac"].item() == pytest.approx(3 / 6)  # the whole of row 1
    w, m = _weights("mask", "sequence")
    torch.testing.assert_close(w, torch.tensor([[0.54, 0.54, 0.54, 1.0], [0.0, 0.0, 0.0, 1.0]], dtype=F64))
    assert m["actor/rollout_is_masked_frac"].item() == pytest.approx(3 / 6)


def test_geometric_level_uses_the_mean_log_ratio():
    w, m = _weights("mask", "geometric")
    g0, g1 = 0.54 ** (1 / 3), 3.6 ** (1 / 3)  # 0.814 and 1.533: both inside [1/2, 2]
    torch.testing.assert_close(w, torch.tensor([[g0, g0, g0, 1.0], [g1, g1, g1, 1.0]], dtype=F64))
    assert m["actor/rollout_is_masked_frac"].item() == 0.0
    w, _ = _weights("truncate", "geometric", c=1.2)
    torch.testing.assert_close(w[1, :3], torch.full((3,), 1.2, dtype=F64))  # 1.533 capped at 1.2, 0.814 kept
    torch.testing.assert_close(w[0, :3], torch.full((3,), g0, dtype=F64))


def test_the_weights_carry_no_gradient_and_reject_a_threshold_not_above_one():
    old, samp = _logps(RHO)
    old.requires_grad_(True)
    w, _ = rollout_correction_weights(old, samp, MASK, mode="truncate")
    assert not w.requires_grad
    with pytest.raises(ValueError, match="threshold C must be > 1"):
        rollout_correction_weights(old, samp, MASK, mode="truncate", threshold=1.0)
    with pytest.raises(ConfigError, match="algorithm.rollout_correction.threshold"):
        load_config("tiny", {"algorithm.rollout_correction": {"mode": "mask", "threshold": 0.5}})
    with pytest.raises(ConfigError, match="algorithm.rollout_correction.mode: 'tis' is not one of"):
        load_config("tiny", {"algorithm.rollout_correction.mode": "tis"})


CORRECTIONS = [("truncate", "token"), ("mask", "token"), ("truncate", "sequence"), ("mask", "geometric")]


@pytest.mark.parametrize(("mode", "level"), CORRECTIONS)
def test_c_infinite_on_policy_objective_equals_the_uncorrected_loss_bit_for_bit(mode, level):
    gen = torch.Generator().manual_seed(0)
    n, t = 6, 5
    mask = (torch.arange(t)[None] < torch.randint(1, t + 1, (n, 1), generator=gen)).float()
    old_logp = -torch.rand(n, t, generator=gen) * 3 * mask
    args = dict(
        old_logp=old_logp,
        entropy=torch.rand(n, t, generator=gen),
        old_entropy=torch.rand(n, t, generator=gen),
        advantages=torch.randn(n, generator=gen),
        mask=mask,
        num_tokens=mask.sum(),
        num_seqs=n,
        max_len=t,
    )
    logp0 = (old_logp + 0.1 * torch.randn(n, t, generator=gen)).requires_grad_(True)
    logp1 = logp0.detach().clone().requires_grad_(True)
    rc = dict(mode=mode, level=level, threshold=math.inf)
    base = build_objective(get_algorithm("steer"))
    corrected = build_objective(get_algorithm("steer", rollout_correction=rc))
    loss0, _, pt0 = base(logp=logp0, **args)
    loss1, m1, pt1 = corrected(logp=logp1, sampling_logp=old_logp.clone(), **args)
    assert torch.equal(loss0, loss1)
    loss0.backward(), loss1.backward()
    assert torch.equal(logp0.grad, logp1.grad)
    assert torch.equal(pt0["weights"], pt1["weights"])
    assert m1["actor/rollout_is_weight_mean"].item() == 1.0


def test_c_infinite_on_policy_update_equals_todays_update_bit_for_bit():
    params = []
    for rc in (None, dict(mode="truncate", threshold=math.inf)):
        model = tiny_model()
        b = scored(model, tiny_batch())
        b.sampling_logp = b.old_logp.clone()  # the sampler is the trainer's rollout policy
        algo = get_algorithm("steer") if rc is None else get_algorithm("steer", rollout_correction=rc)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        res = policy_update(
            model, opt, b, build_objective(algo), mini_batch_size=6, micro_batch_size=3,
            generator=torch.Generator().manual_seed(7),
        )  # fmt: skip
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])
    assert res.metrics["actor/rollout_is_truncated_frac"] == 0.0


def test_a_correction_without_the_samplers_log_probs_names_the_fix():
    model = tiny_model()
    b = scored(model, tiny_batch())
    objective = build_objective(get_algorithm("steer", rollout_correction=dict(mode="mask")))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="rollout_correction.mode=none"):
        policy_update(model, opt, b, objective, mini_batch_size=6, micro_batch_size=3)
