"""The algorithm layer and the update loop on a tiny real transformers model."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from steer.algorithms import ALGORITHMS, AlgorithmConfig, get_algorithm
from steer.batch import build_policy_batch
from steer.config import ConfigError, load_config
from steer.objective import build_objective
from steer.scoring import forward_logprobs, score_batch
from steer.update import policy_update

pytestmark = pytest.mark.unit

VOCAB = 40


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(cfg).float()


def tiny_batch(n_prompts=3, g=4, t=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(3, VOCAB, (int(k),), generator=gen).tolist()
        for k in torch.randint(2, 5, (n_prompts,), generator=gen)
    ]
    group = torch.arange(n_prompts).repeat_interleave(g)  # (N,)
    resp = torch.randint(3, VOCAB, (n_prompts * g, t), generator=gen)  # (N, T)
    lengths = torch.randint(1, t + 1, (n_prompts * g,), generator=gen)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()  # (N, T)
    adv = torch.randn(n_prompts * g, generator=gen)
    return build_policy_batch(prompts, group, resp * mask.long(), mask, adv, pad_id=0)


def scored(model, batch):
    batch.old_logp, batch.old_entropy = score_batch(model, batch, micro_batch_size=4)
    return batch


def test_layout_puts_each_response_after_its_own_prompt():
    b = tiny_batch()
    assert b.input_ids.shape == (12, b.prompt_len + 6)
    assert torch.equal(b.response_ids, b.input_ids[:, b.prompt_len :])
    # left padding: every row's attention starts where its prompt starts and covers the valid response
    assert torch.equal(b.attention_mask[:, b.prompt_len :].float(), b.response_mask)


def test_scoring_matches_an_unpadded_forward():
    model = tiny_model()
    b = scored(model, tiny_batch())
    row = 5
    p = b.attention_mask[row, : b.prompt_len].sum()
    n = int(b.response_mask[row].sum())
    ids = torch.cat([b.input_ids[row, b.prompt_len - p : b.prompt_len], b.response_ids[row, :n]])[None]
    with torch.no_grad():
        logits = model(ids).logits[0, p - 1 : p - 1 + n]
    ref = torch.log_softmax(logits, -1).gather(-1, b.response_ids[row, :n, None])[:, 0]
    assert torch.allclose(b.old_logp[row, :n], ref, atol=1e-5)


def _grads(model, batch, cfg, micro, steer_max_abs=None):
    model.zero_grad()
    mask = batch.response_mask
    counts = dict(num_tokens=mask.sum(), num_seqs=len(batch), max_len=mask.shape[1])
    for idx in torch.arange(len(batch)).split(micro):
        m = batch.select(idx)
        logp, ent = forward_logprobs(model, m)
        loss, _, _ = build_objective(cfg)(
            logp=logp,
            old_logp=m.old_logp,
            entropy=ent,
            old_entropy=m.old_entropy,
            advantages=m.advantages,
            mask=m.response_mask,
            steer_max_abs=steer_max_abs,
            **counts,
        )
        loss.backward()
    return [p.grad.clone() for p in model.parameters()]


# Clip-Cov, KL-Cov and fork tokens choose their tokens per call (per micro-batch, as verl does), so for them the
# split is part of the algorithm; every other arm must be split-invariant.
@pytest.mark.parametrize("name", ["grpo", "clip_higher", "steer", "entropy_bonus", "entropy_aware_adv"])
def test_mini_batch_gradient_does_not_depend_on_the_micro_batch_split(name):
    model = tiny_model()
    b = scored(model, tiny_batch())
    # perturb the policy so that ratios differ from 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # STEER is split-invariant when its normaliser spans the mini-batch (any scope but micro): pass one M
    cfg = get_algorithm(name)
    m = torch.tensor(0.01)
    whole = _grads(model, b, cfg, micro=12, steer_max_abs=m)
    for micro in (6, 3):
        split = _grads(model, b, cfg, micro=micro, steer_max_abs=m)
        assert all(torch.allclose(a, c, atol=1e-6, rtol=1e-5) for a, c in zip(whole, split, strict=True))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), form=st.sampled_from(["first_order", "released"]))
def test_lambda_min_one_reproduces_grpo_exactly(seed, form):
    model = tiny_model(seed)
    b = scored(model, tiny_batch(seed=seed))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base = _grads(model, b, get_algorithm("clip_higher"), micro=6)
    steer = _grads(model, b, get_algorithm("steer", token_weighting={"lambda_min": 1.0, "form": form}), micro=6)
    assert all(torch.equal(a, c) for a, c in zip(base, steer, strict=True))


def test_micro_scope_makes_the_split_a_hyperparameter():
    model = tiny_model()
    b = scored(model, tiny_batch())
    cfg = get_algorithm("steer", token_weighting={"lambda_min": 0.5})
    whole, split = _grads(model, b, cfg, micro=12), _grads(model, b, cfg, micro=3)
    assert not all(torch.allclose(a, c, atol=1e-6) for a, c in zip(whole, split, strict=True))


def test_steer_changes_the_gradient_when_lambda_min_below_one():
    model = tiny_model()
    b = scored(model, tiny_batch())
    base = _grads(model, b, get_algorithm("clip_higher"), micro=12)
    steer = _grads(model, b, get_algorithm("steer", token_weighting={"lambda_min": 0.5}), micro=12)
    assert not all(torch.allclose(a, c) for a, c in zip(base, steer, strict=True))


@pytest.mark.parametrize(
    "name,scope", [(n, "micro") for n in ALGORITHMS.names()] + [("steer", s) for s in ("mini", "rollout", "running")]
)
def test_every_algorithm_and_normaliser_runs_an_update(name, scope):
    model = tiny_model()
    b = scored(model, tiny_batch())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = get_algorithm(name, token_weighting={"normaliser": scope}) if name == "steer" else get_algorithm(name)
    res = policy_update(
        model,
        opt,
        b,
        build_objective(cfg),
        mini_batch_size=6,
        micro_batch_size=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.metrics["actor/optimizer_steps"] == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in res.metrics.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert res.omega.shape == res.weights.shape == (12, 6)
    assert (res.weights[b.response_mask == 0] == 1).all() or name == "fork_tokens"


def test_update_is_reproducible_under_a_seed():
    outs = []
    for _ in range(2):
        model = tiny_model()
        b = scored(model, tiny_batch())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        policy_update(
            model,
            opt,
            b,
            build_objective(get_algorithm("clip_cov")),
            mini_batch_size=6,
            micro_batch_size=3,
            generator=torch.Generator().manual_seed(7),
        )
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_bad_settings_name_the_field_and_the_choices():
    with pytest.raises(ConfigError, match="algorithm.token_weighting.form: 'firstorder' is not one of: 'first_o"):
        load_config("tiny", {"algorithm.token_weighting.form": "firstorder"}, algorithm="steer")
    with pytest.raises(ValueError, match="algorithm.name='clipcov' is not one of: .*clip_cov"):
        get_algorithm("clipcov")
    with pytest.raises(ValueError, match="micro_batch_size=4 must divide mini_batch_size=6"):
        model = tiny_model()
        policy_update(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            scored(model, tiny_batch()),
            build_objective(AlgorithmConfig()),
            mini_batch_size=6,
            micro_batch_size=4,
        )


def _nan_in_row(batch, row):
    adv = batch.advantages.clone()
    adv[row] = float("nan")  # one micro-batch's loss, so its mini-batch's gradient, turns NaN
    batch.advantages = adv
    return batch


def test_a_non_finite_gradient_skips_the_optimizer_step_and_leaves_the_weights_unchanged():
    model = tiny_model()
    b = _nan_in_row(scored(model, tiny_batch()), row=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    res = policy_update(
        model, opt, b, build_objective(get_algorithm("grpo")), mini_batch_size=12, micro_batch_size=3, shuffle=False
    )
    assert res.metrics["actor/skipped_steps"] == 1 and res.metrics["actor/optimizer_steps"] == 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert not opt.state and all(p.grad is None for p in model.parameters())  # nothing applied, nothing left over


def test_only_the_poisoned_mini_batch_is_skipped():
    """Two mini-batches, a NaN in the first: the update equals a clean update on the second alone."""
    objective = build_objective(get_algorithm("grpo"))
    results = []
    for poisoned in (True, False):
        model = tiny_model()
        b = scored(model, tiny_batch())
        if poisoned:
            b = _nan_in_row(b, row=1)
        else:
            b = b.select(torch.arange(6, 12))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        res = policy_update(model, opt, b, objective, mini_batch_size=6, micro_batch_size=3, shuffle=False)
        results.append((res.metrics, [p.detach().clone() for p in model.parameters()]))
    (bad, bad_w), (clean, clean_w) = results
    assert bad["actor/skipped_steps"] == 1 and bad["actor/optimizer_steps"] == 1 == clean["actor/optimizer_steps"]
    assert bad["actor/grad_norm"] == clean["actor/grad_norm"]  # the mean over applied steps only
    assert all(torch.equal(a, c) for a, c in zip(bad_w, clean_w, strict=True))
