"""The ``hf`` rollout backend: reproducibility, shapes and masks, EOS and truncation, greedy path, log-probs."""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steer.models.tiny import TinyPolicySpec, build_char_tokenizer, build_tiny_model  # noqa: E402
from steer.rollout import ROLLOUT_BACKENDS, RolloutEngine, make_rollout_engine  # noqa: E402
from steer.rollout.hf import HFRolloutEngine, top_p_filter  # noqa: E402

pytestmark = pytest.mark.unit

PROMPTS = ["Calculate 4 - 1.\n", "Calculate 37 + 58.\n", "9\n"]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def policy():
    spec = TinyPolicySpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, seed=3)
    tokenizer = build_char_tokenizer(spec.alphabet)
    model = build_tiny_model(spec, tokenizer)
    with torch.no_grad():  # sharpen the random model so samples are not near-uniform
        model.get_input_embeddings().weight.mul_(3.0)
    return model, tokenizer


def _generate(engine, **overrides):
    kwargs = dict(n_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0) | overrides
    return engine.generate(PROMPTS, **kwargs)


def test_registry_and_protocol(policy):
    model, tokenizer = policy
    engine = make_rollout_engine("hf", model=model, tokenizer=tokenizer)
    assert isinstance(engine, HFRolloutEngine) and isinstance(engine, RolloutEngine)
    assert "hf" in ROLLOUT_BACKENDS
    with pytest.raises(KeyError, match="valid names: hf"):
        make_rollout_engine("hff", model=model, tokenizer=tokenizer)


def test_same_seed_same_batch_other_seed_differs(policy):
    engine = HFRolloutEngine(*policy)
    a, b, c = _generate(engine), _generate(engine), _generate(engine, seed=1)
    assert torch.equal(a.response_ids, b.response_ids) and a.response_text == b.response_text
    assert torch.equal(a.sampling_logp, b.sampling_logp)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_shapes_indices_and_masks(policy):
    model, tokenizer = policy
    batch = _generate(HFRolloutEngine(model, tokenizer))
    n, t = batch.response_ids.shape  # (N, T)
    assert n == len(PROMPTS) * 4 and t <= 12
    assert batch.num_prompts == 3 and batch.num_samples == 4
    assert batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.sample_index.tolist() == [0, 1, 2, 3] * 3
    assert batch.prompt_ids == [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert batch.response_mask.shape == (n, t) and batch.response_mask.dtype == torch.float32
    assert batch.sampling_logp.shape == (n, t) and batch.truncated.shape == (n,)
    lengths = batch.response_lengths
    for row in range(n):  # the mask is a prefix of ones; padding holds the pad id and log-prob 0
        k = int(lengths[row])
        assert batch.response_mask[row, :k].eq(1).all() and batch.response_mask[row, k:].eq(0).all()
        assert batch.response_ids[row, k:].eq(tokenizer.pad_token_id).all()
        assert batch.sampling_logp[row, k:].eq(0).all() and batch.sampling_logp[row, :k].lt(0).all()


def test_eos_ends_a_row_and_counts_as_valid(policy):
    """Declare a token that the greedy path emits as an extra EOS: rows stop there, EOS included, others truncate."""
    model, tokenizer = policy
    greedy = _generate(HFRolloutEngine(model, tokenizer), n_samples=1, temperature=0.0)
    stop = int(greedy.response_ids[0, 3])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    try:
        batch = _generate(HFRolloutEngine(model, tokenizer), n_samples=1, temperature=0.0)
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    first = greedy.response_ids[0].tolist().index(stop)
    assert int(batch.response_lengths[0]) == first + 1 and int(batch.response_ids[0, first]) == stop
    assert not bool(batch.truncated[0])
    for row in range(len(PROMPTS)):
        ids = batch.response_ids[row, : int(batch.response_lengths[row])].tolist()
        assert bool(batch.truncated[row]) == (stop not in ids and tokenizer.eos_token_id not in ids)
        assert bool(batch.truncated[row]) == (len(ids) == 12) or stop in ids


def test_truncated_when_max_new_tokens_is_hit(policy):
    model, tokenizer = policy
    batch = _generate(HFRolloutEngine(model, tokenizer), max_new_tokens=3)
    assert batch.response_ids.shape[1] == 3
    ended = [tokenizer.eos_token_id in r for r in batch.response_ids.tolist()]
    assert batch.truncated.tolist() == [not e for e in ended]


def _argmax_path(model, prompt_ids: list[int], steps: int) -> list[int]:
    """Greedy decoding without cache or padding: one full forward per token."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def test_tiny_top_p_is_greedy_and_matches_uncached_argmax(policy):
    model, tokenizer = policy
    engine = HFRolloutEngine(model, tokenizer)
    nucleus = _generate(engine, n_samples=2, top_p=1e-6, seed=5)
    greedy = _generate(engine, n_samples=2, temperature=0.0)
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    for row in range(len(PROMPTS) * 2):
        k = int(greedy.response_lengths[row])
        expected = _argmax_path(model, greedy.prompt_ids[int(greedy.group_index[row])], k)
        assert greedy.response_ids[row, :k].tolist() == expected


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logp_matches_full_forward(policy, temperature):
    model, tokenizer = policy
    batch = _generate(HFRolloutEngine(model, tokenizer), temperature=temperature, top_p=0.9)
    for row in range(batch.response_ids.shape[0]):
        prompt = batch.prompt_ids[int(batch.group_index[row])]
        k = int(batch.response_lengths[row])
        response = batch.response_ids[row, :k]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response.tolist()])).logits[0]  # (P + k, V)
        logp = (logits[len(prompt) - 1 : -1] / temperature).log_softmax(-1)  # (k, V)
        expected = logp.gather(-1, response[:, None]).squeeze(-1)
        torch.testing.assert_close(batch.sampling_logp[row, :k], expected, atol=1e-4, rtol=0)


def test_model_mode_is_restored(policy):
    model, tokenizer = policy
    model.train()
    _generate(HFRolloutEngine(model, tokenizer), max_new_tokens=2)
    assert model.training
    model.eval()


def test_top_p_filter_by_hand():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    assert torch.isinf(top_p_filter(logits, 0.5)).tolist() == [[False, True, True]]
    assert torch.isinf(top_p_filter(logits, 0.6)).tolist() == [[False, False, True]]
    assert torch.isinf(top_p_filter(logits, 1.0)).tolist() == [[False, False, False]]
    shuffled = logits[:, [2, 0, 1]]  # order must not matter
    assert torch.isinf(top_p_filter(shuffled, 0.6)).tolist() == [[True, False, False]]


def test_gpu_rollout_check_smoke_runs_on_cpu():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_rollout_check.py"
    spec = importlib.util.spec_from_file_location("gpu_rollout_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke"])
    assert result["batch"] == 8 and result["generated_tokens"] > 0 and result["logp_mismatch_max"] < 1e-4


def test_rows_that_end_leave_the_batch_and_the_others_decode_as_alone(policy):
    """A row that samples EOS is dropped from the decode batch and its KV cache: every row's sampling log-probs are
    those of one uncached forward over its own prompt and response, and ended rows stay padded and masked."""
    model, tokenizer = policy
    first = _generate(HFRolloutEngine(model, tokenizer))
    stop = int(first.response_ids[:, 1:].flatten().mode().values)  # a frequent token as an extra EOS: rows end apart
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    try:
        batch = _generate(HFRolloutEngine(model, tokenizer))
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    lengths = batch.response_lengths.tolist()
    assert min(lengths) < max(lengths)  # some rows left the batch while others went on
    for row, k in enumerate(lengths):
        prompt = batch.prompt_ids[int(batch.group_index[row])]
        response = batch.response_ids[row, :k]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response.tolist()])).logits[0, len(prompt) - 1 : -1]
        ref = logits.log_softmax(-1).gather(-1, response[:, None])[:, 0]  # (k,)
        assert torch.allclose(batch.sampling_logp[row, :k], ref, atol=1e-4), row
        assert (batch.response_mask[row, k:] == 0).all() and (batch.sampling_logp[row, k:] == 0).all()
        assert (batch.response_ids[row, k:] == HFRolloutEngine(model, tokenizer).pad_token_id).all()
