"""GSPO, CISPO, adaptive entropy control and STARE on hand-computed tensors (docs/algorithms.md sections 3 and 7b)."""

import math

import pytest
import torch

from steer.aggregation import aggregate
from steer.algorithms import get_algorithm
from steer.entropy_control import AdaptiveEntropyCoef, stare_weights
from steer.losses import POLICY_LOSSES
from steer.objective import build_objective

pytestmark = pytest.mark.unit

L = math.log


def _gspo_case():
    logp = torch.tensor([[L(0.5), L(0.5)], [L(0.4), -9.0]], requires_grad=True)
    old = torch.tensor([[L(0.25), L(0.5)], [L(0.4), -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # (N=2, T=2); row 1 has one token
    return logp, old, mask, torch.tensor([1.0, -1.0])


def test_gspo_clips_the_length_normalised_sequence_ratio():
    logp, old, mask, adv = _gspo_case()
    # row 0: log s = (log 2 + 0) / 2 -> s = sqrt 2 > 1.2 with A > 0: clipped, -A * 1.2 on both tokens, no gradient;
    # row 1: s = 1 -> -A s = 1, gradient d(s)/d(logp) = s = 1
    loss_mat, metrics = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, eps_low=0.2, eps_high=0.2, dual_clip_c=None)
    assert torch.allclose(loss_mat[mask.bool()], torch.tensor([-1.2, -1.2, 1.0]))
    loss = aggregate(loss_mat, mask, "seq-mean-token-mean")
    assert loss.item() == pytest.approx((-1.2 + 1.0) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0], [0.5, 0.0]]))  # (1/N)(1/|y_1|) * 1
    assert metrics["actor/clipfrac"].item() == pytest.approx(2 / 3)
    assert metrics["actor/seq_ratio_mean"].item() == pytest.approx((2 * math.sqrt(2) + 1) / 3)


def test_gspo_unclipped_gradient_is_s_times_the_mean_token_gradient():
    logp, old, mask, adv = _gspo_case()
    loss_mat, _ = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, eps_low=0.2, eps_high=0.5, dual_clip_c=None)
    aggregate(loss_mat, mask, "seq-mean-token-mean").backward()
    # row 0: l = -A s_0 with gradient -A s_0 (1/|y_0|) per token, times 1/N
    assert torch.allclose(logp.grad[0], torch.full((2,), -math.sqrt(2) / 4))


def test_cispo_weights_reinforce_by_the_clipped_detached_ratio():
    logp = torch.tensor([[L(0.5), L(0.25)]], requires_grad=True)
    old = torch.tensor([[L(0.25), L(0.5)]])  # r = 2, 0.5
    mask = torch.ones(1, 2)
    loss_mat, metrics = POLICY_LOSSES.get("cispo")(logp, old, torch.tensor([1.0]), mask, eps_low=1.0, eps_high=0.28)
    # weights sg(clip(r, 0, 1.28)) = 1.28, 0.5; l = -w A log p
    assert torch.allclose(loss_mat, torch.tensor([[-1.28 * L(0.5), -0.5 * L(0.25)]]))
    loss_mat.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.28, -0.5]]))  # the clip bounds the weight, never the gradient
    assert metrics["actor/is_clipfrac"].item() == pytest.approx(0.5)


def test_adaptive_entropy_coefficient_follows_skywork_or1():
    c = AdaptiveEntropyCoef(target_entropy=0.2, delta=0.005, coef_init=0.0, coef_max=0.008)
    # alpha_k = c_k 1[H_k <= 0.2]; c_{k+1} = clamp(c_k +- 0.005, 0, 0.008)
    assert [c.update(h) for h in (0.1, 0.1, 0.1, 0.3, 0.2, 0.5, 0.5)] == pytest.approx(
        [0.0, 0.005, 0.008, 0.0, 0.003, 0.0, 0.0]
    )
    assert c.coef == 0.0
    restored = AdaptiveEntropyCoef(target_entropy=0.2, delta=0.005)
    restored.load_state_dict({"coef": 0.004})
    assert restored.update(0.1) == 0.004


def test_adaptive_entropy_objective_adds_the_steered_bonus():
    logp = torch.tensor([[L(0.5), L(0.4)]])
    ent = torch.tensor([[0.1, 0.2]])
    kw = dict(logp=logp, old_logp=logp, entropy=ent, old_entropy=ent, advantages=torch.tensor([1.0]))
    kw.update(mask=torch.ones(1, 2), num_tokens=2, num_seqs=1, max_len=2)
    base = build_objective(get_algorithm("clip_higher"))(**kw)[0]
    obj = build_objective(get_algorithm("adaptive_entropy", entropy_control={"coef_init": 0.01}))
    assert obj.start_rollout(ent, torch.ones(1, 2)) == {"actor/entropy_coef": 0.01}  # H = 0.15 <= target 0.2
    assert obj(**kw)[0].item() == pytest.approx(base.item() - 0.01 * 0.15)
    assert obj.state_dict()["entropy_control"]["coef"] == pytest.approx(0.015)  # H < target: c grows by delta


def test_stare_amplifies_the_highest_surprisal_tokens_while_the_entropy_is_below_target():
    logp = torch.tensor([[-0.1, -2.0, -0.5], [-3.0, -0.2, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the -7 is padding
    adv = torch.tensor([1.0, -1.0])
    kw = dict(target_entropy=0.3, top_ratio=0.3, reweight_w=1.1, reweight_m=0.9)
    # A > 0: 3 tokens, ceil(0.9) = 1 -> the surprisal-2.0 token; A < 0: 2 tokens, ceil(0.6) = 1 -> the -3.0 token
    o1 = stare_weights(logp, adv, mask, rollout_entropy=0.1, variant="O1", **kw)
    assert torch.allclose(o1, torch.tensor([[1.0, 1.1, 1.0], [1.0, 1.0, 1.0]]))
    c2 = stare_weights(logp, adv, mask, rollout_entropy=0.1, variant="C2", **kw)
    assert torch.allclose(c2, torch.tensor([[1.0, 1.1, 1.0], [0.9, 1.0, 1.0]]))
    assert torch.equal(stare_weights(logp, adv, mask, rollout_entropy=0.3, variant="C2", **kw), torch.ones(2, 3))


def test_stare_objective_reads_the_rollout_entropy_for_its_gate():
    logp = torch.tensor([[-0.1, -2.0, -0.5]])
    kw = dict(logp=logp, old_logp=logp, entropy=logp.abs(), old_entropy=logp.abs(), advantages=torch.tensor([1.0]))
    kw.update(mask=torch.ones(1, 3), num_tokens=3, num_seqs=1, max_len=3)
    obj = build_objective(get_algorithm("stare", token_weighting={"top_ratio": 0.3}))
    obj.start_rollout(torch.full((1, 3), 0.1), torch.ones(1, 3))  # below the target 0.3: gate on
    assert torch.allclose(obj(**kw)[2]["weights"], torch.tensor([[1.0, 1.1, 1.0]]))
    obj.start_rollout(torch.full((1, 3), 0.5), torch.ones(1, 3))  # above: GRPO
    assert torch.equal(obj(**kw)[2]["weights"], torch.ones(1, 3))


@pytest.mark.parametrize(
    "name,loss,eps,agg",
    [("gspo", "gspo", (3e-4, 4e-4, None), "seq-mean-token-mean"), ("cispo", "cispo", (1.0, 0.28, None), "token-mean")],
)
def test_new_loss_presets_carry_their_papers_settings(name, loss, eps, agg):
    a = get_algorithm(name)
    assert a.policy_loss.name == loss and (a.clip.eps_low, a.clip.eps_high, a.clip.dual_clip_c) == eps
    assert a.loss_agg_mode == agg
