"""Issue 15's defects, each pinned by a test that fails on the code before the fix: the normaliser group as its own
setting, the running normaliser's split-invariance, Dr.GRPO's constant, eval-mode old log-probs, one BOS, and the
released code's min-max linear map."""

import math

import pytest
import torch
from test_update import scored, tiny_batch, tiny_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from steer.algorithms import SteerWeighting, get_algorithm
from steer.models.loading import format_prompt
from steer.models.tiny import build_char_tokenizer
from steer.objective import build_objective
from steer.reweighting import steer_weights_linear
from steer.rollout.base import encode_prompts
from steer.scoring import forward_logprobs, score_batch
from steer.update import policy_update

pytestmark = pytest.mark.unit


def _update(cfg, micro, *, mini=12, lr=1e-3, opt="adamw", **kwargs):
    model = tiny_model()
    b = scored(model, tiny_batch())
    optim = (torch.optim.AdamW if opt == "adamw" else torch.optim.SGD)(model.parameters(), lr=lr)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    res = policy_update(
        model, optim, b, build_objective(cfg), mini_batch_size=mini, micro_batch_size=micro, shuffle=False, **kwargs
    )
    return res, torch.cat([p.detach().flatten() for p in model.parameters()]) - before


def test_the_normaliser_group_is_its_own_setting_with_the_released_default():
    s = SteerWeighting()
    assert (s.normaliser, s.normaliser_group) == ("group", 8)


@pytest.mark.parametrize("name", ["group", "running", "group_quantile"])
def test_group_normalisers_do_not_depend_on_the_micro_batch_split(name):
    cfg = get_algorithm("steer", token_weighting={"lambda_min": 0.5, "normaliser": name, "normaliser_group": 4})
    # aligned with the groups of 4, and straddling; SGD, whose step is linear in the gradient (Adam's first step is
    # about sign(g), which turns rounding noise on near-zero gradients into full-size differences)
    results = [_update(cfg, micro, opt="sgd", lr=1.0) for micro in (2, 3, 4, 6, 12)]
    w0, d0 = results[0][0].weights, results[0][1]
    for res, delta in results[1:]:
        assert torch.allclose(res.weights, w0, atol=1e-6)
        assert torch.allclose(delta, d0, atol=1e-5)


def test_group_normaliser_takes_the_max_over_each_group_of_sequences():
    cfg = get_algorithm("steer", token_weighting={"lambda_min": 0.5, "normaliser_group": 4})
    res, _ = _update(cfg, micro=6)  # one mini-batch: every weight at the same parameters
    mask = tiny_batch().response_mask.bool()
    m = torch.where(mask, res.omega.abs(), 0.0).reshape(3, -1).max(-1).values.repeat_interleave(4)[:, None]
    expected = torch.where(mask, torch.exp(math.log(0.5) * res.omega.abs() / m), 1.0)
    assert torch.allclose(res.weights, expected, atol=1e-6)
    assert (res.weights.reshape(3, -1).min(-1).values == 0.5).all()  # lambda_min once per group, not per batch


def test_group_reduce_by_hand():
    from steer.normalisers import group_reduce  # new in issue 15 (imported here, so the other tests run on old code)

    omega = torch.tensor([[1.0, -2.0], [3.0, 9.0], [-4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # the 9 is padding
    assert torch.equal(group_reduce(omega, mask, 2), torch.tensor([3.0, 4.0]))  # rows {0, 1}, {2}
    # |Omega| of group 0's valid tokens: 1, 2, 3 -> median 2; 0.75 quantile: 2 + 0.5 * (3 - 2) = 2.5
    assert torch.allclose(group_reduce(omega, mask, 2, 0.5), torch.tensor([2.0, 4.0]))
    assert torch.allclose(group_reduce(omega, mask, 2, 0.75), torch.tensor([2.5, 4.0]))
    assert torch.equal(group_reduce(omega, torch.zeros_like(mask), 3, 0.99), torch.tensor([0.0]))


def test_drgrpo_divides_by_the_generation_budget_not_the_longest_response():
    cfg = get_algorithm("grpo", loss_agg_mode="seq-mean-token-sum-norm")
    t = tiny_batch().response_mask.shape[1]
    kw = dict(opt="sgd", lr=1.0, max_grad_norm=1e9)
    (_, default), (_, at_t), (_, budget) = (_update(cfg, 4, **kw, max_response_len=L) for L in (None, t, 4 * t))
    assert torch.allclose(default, at_t)
    assert torch.allclose(budget * 4, at_t, atol=1e-6)  # SGD: the step scales with 1 / max_len


def test_old_logprobs_are_scored_without_dropout_and_the_mode_is_restored():
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.5,
    )
    model = Qwen2ForCausalLM(cfg).float().train()
    b = tiny_batch()
    first, second = score_batch(model, b, micro_batch_size=4), score_batch(model, b, micro_batch_size=4)
    assert model.training
    model.eval()
    with torch.no_grad():
        ref = forward_logprobs(model, b)
    assert torch.equal(first[0], second[0])
    assert torch.allclose(first[0], ref[0] * b.response_mask, atol=1e-6)


def test_a_chat_template_that_writes_bos_gets_one_bos():
    from tokenizers import processors

    tok = build_char_tokenizer("abc+=?\n ")
    tok._tokenizer.post_processor = processors.TemplateProcessing(  # a Llama-style tokenizer that adds BOS
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
    )
    tok.chat_template = "<bos>{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    prompt = format_prompt(tok, "a+b=?")
    [ids] = encode_prompts(tok, [prompt], n_samples=1, max_new_tokens=4)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    [plain] = encode_prompts(tok, ["a+b=?"], n_samples=1, max_new_tokens=4)  # no template: the tokenizer's BOS
    assert plain[0] == tok.bos_token_id and plain[1:] == ids[1:-1]


def test_linear_map_is_the_released_min_max_map():
    omega = torch.tensor([[0.2, -1.0, 0.6, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # lo = 0.2, M = 1: s = (|Omega| - lo) / (M - lo) = 0, 1, 0.5 -> w = 1.2 - 0.4 s
    assert torch.allclose(steer_weights_linear(omega, mask), torch.tensor([[1.2, 0.8, 1.0, 1.0]]))
