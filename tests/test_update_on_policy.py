"""On-policy updates take the old log-probs from their own forward (``steer.update.reuses_forward_as_old``): the
loss, gradient, metrics and weights are bit-identical to scoring the batch first with ``score_batch``."""

import pytest
import torch
from test_update import tiny_batch, tiny_model

from steer.algorithms import get_algorithm
from steer.objective import build_objective
from steer.scoring import score_batch
from steer.update import policy_update, reuses_forward_as_old

pytestmark = pytest.mark.unit


def _update(objective, *, score_first: bool):
    model = tiny_model()
    model.train()
    batch = tiny_batch()
    if score_first:
        batch.old_logp, batch.old_entropy = score_batch(model, batch, micro_batch_size=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    grads = []
    step = opt.step

    def record_then_step(*a, **k):  # the accumulated gradient the optimizer step applies
        grads.append([p.grad.clone() for p in model.parameters()])
        return step(*a, **k)

    opt.step = record_then_step
    res = policy_update(
        model, opt, batch, objective, mini_batch_size=12, micro_batch_size=4, generator=torch.Generator().manual_seed(3)
    )
    return res, batch, grads[0], [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["grpo", "steer_micro", "clip_cov", "entropy_bonus"])
def test_on_policy_update_without_a_scoring_pass_is_bit_identical(name):
    algorithm = get_algorithm("steer", token_weighting={"normaliser": "micro"}) if name == "steer_micro" else None
    objective = build_objective(algorithm or get_algorithm(name))
    assert reuses_forward_as_old(objective, num_responses=12, mini_batch_size=12, epochs=1)
    ref, ref_batch, ref_grad, ref_weights = _update(objective, score_first=True)
    got, got_batch, got_grad, got_weights = _update(objective, score_first=False)
    assert torch.equal(got_batch.old_logp, ref_batch.old_logp)  # filled in place for metrics and persistence
    assert torch.equal(got_batch.old_entropy, ref_batch.old_entropy)
    assert all(torch.equal(a, b) for a, b in zip(got_grad, ref_grad, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(got_weights, ref_weights, strict=True))
    assert got.metrics == ref.metrics  # the loss among them
    assert torch.equal(got.omega, ref.omega) and torch.equal(got.weights, ref.weights)


def test_off_policy_or_a_normaliser_that_reads_old_first_still_needs_the_scoring_pass():
    grpo = build_objective(get_algorithm("grpo"))
    for name in ("stare", "adaptive_entropy"):  # they read the rollout's entropy H_k before the update
        assert not reuses_forward_as_old(
            build_objective(get_algorithm(name)), num_responses=12, mini_batch_size=12, epochs=1
        )
    assert not reuses_forward_as_old(grpo, num_responses=12, mini_batch_size=6, epochs=1)  # two optimizer steps
    assert not reuses_forward_as_old(grpo, num_responses=12, mini_batch_size=12, epochs=2)
    for scope in ("rollout", "mini", "group", "group_quantile", "running"):  # group: a straddled group scores first
        steer = build_objective(get_algorithm("steer", token_weighting={"normaliser": scope}))
        assert not reuses_forward_as_old(steer, num_responses=12, mini_batch_size=12, epochs=1)
    model, batch = tiny_model(), tiny_batch()
    with pytest.raises(ValueError, match="score_batch"):
        policy_update(model, torch.optim.AdamW(model.parameters()), batch, grpo, mini_batch_size=6, micro_batch_size=3)
