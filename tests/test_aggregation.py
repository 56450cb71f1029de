"""Tests for steer.aggregation: hand-computed modes, micro-batch invariance of the gradient, masking properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.aggregation import AGGREGATIONS, aggregate

pytestmark = pytest.mark.unit

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]

# Row 0: three valid tokens (1, 2, 3); row 1: two valid tokens (4, 5) and padding; row 2: no valid token.
# Padded positions hold 9 and inf: they must never reach the result.
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0], [9.0, float("inf"), 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float64)


def test_registry_names():
    assert AGGREGATIONS.names() == sorted(MODES)


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        # (1+2+3+4+5) / 5 valid tokens
        ("token-mean", {}, 15 / 5),
        # the caller's global count replaces this call's: 15 / 10
        ("token-mean", {"num_tokens": 10}, 15 / 10),
        # row means 6/3 = 2, 9/2 = 4.5, empty row 0; divided by 3 rows
        ("seq-mean-token-mean", {}, (2 + 4.5 + 0) / 3),
        ("seq-mean-token-mean", {"num_seqs": 5}, (2 + 4.5 + 0) / 5),
        # row sums 6, 9, 0 over 3 rows
        ("seq-mean-token-sum", {}, (6 + 9 + 0) / 3),
        ("seq-mean-token-sum", {"num_seqs": 6}, (6 + 9 + 0) / 6),
        # Dr.GRPO: 15 / (3 rows * T = 3)
        ("seq-mean-token-sum-norm", {}, 15 / (3 * 3)),
        ("seq-mean-token-sum-norm", {"num_seqs": 3, "max_len": 5}, 15 / (3 * 5)),
    ],
)
def test_hand_computed(mode, kwargs, expected):
    out = aggregate(LOSS, MASK, mode, **kwargs)
    assert out.shape == ()
    assert out.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_bool_mask_and_ignored_counts(mode):
    # a bool mask gives the same result; counts a mode does not use are accepted and ignored
    base = aggregate(LOSS, MASK, mode)
    assert aggregate(LOSS, MASK.bool(), mode).item() == pytest.approx(base.item())
    unused = {
        "token-mean": {"num_seqs": 99, "max_len": 99},
        "seq-mean-token-mean": {"num_tokens": 99, "max_len": 99},
        "seq-mean-token-sum": {"num_tokens": 99, "max_len": 99},
        "seq-mean-token-sum-norm": {"num_tokens": 99},
    }[mode]
    assert aggregate(LOSS, MASK, mode, **unused).item() == pytest.approx(base.item())


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_gives_zero_not_nan(mode):
    out = aggregate(torch.ones(2, 3), torch.zeros(2, 3), mode)
    assert out.item() == 0.0


def test_unknown_mode_and_bad_shapes():
    with pytest.raises(KeyError, match="seq-mean-token-mean"):
        aggregate(LOSS, MASK, "token_mean")
    with pytest.raises(ValueError, match="loss_mat"):
        aggregate(LOSS, MASK[:2], "token-mean")


# ------------------------------------------------------------------------------------------- micro-batch invariance
N, T, D = 8, 8, 4
LENGTHS = torch.tensor([5, 1, 8, 0, 3, 8, 2, 7])  # unequal, one empty response


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(N, T, D, dtype=torch.float64)
    mask = (torch.arange(T)[None, :] < LENGTHS[:, None]).double()  # (N, T)
    return model, x, mask


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _accumulated_grad(model, x, mask, mode, num_micro, global_counts, trim=False):
    model.zero_grad()
    for xs, ms in zip(x.chunk(num_micro), mask.chunk(num_micro)):
        if trim:  # each micro-batch padded to its own longest response, as a packing collator would do
            t = max(int(ms.sum(-1).max()), 1)
            xs, ms = xs[:, :t], ms[:, :t]
        loss_mat = model(xs).squeeze(-1)  # (n, t)
        if global_counts:
            loss = aggregate(loss_mat, ms, mode, num_tokens=mask.sum(), num_seqs=N, max_len=T)
        else:
            loss = aggregate(loss_mat, ms, mode) / num_micro  # local counts, averaged: the classic bug
        loss.backward()
    return _grads(model)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_micro", [2, 4])
def test_micro_batch_accumulation_matches_whole_batch(mode, num_micro):
    model, x, mask = _setup()
    whole = _accumulated_grad(model, x, mask, mode, 1, global_counts=True)
    micro = _accumulated_grad(model, x, mask, mode, num_micro, global_counts=True)
    assert whole.abs().sum() > 0
    torch.testing.assert_close(micro, whole, rtol=0, atol=1e-6)
    # also when each micro-batch is padded to its own length: max_len must then be passed, not defaulted
    trimmed = _accumulated_grad(model, x, mask, mode, num_micro, global_counts=True, trim=True)
    torch.testing.assert_close(trimmed, whole, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_micro", [2, 4])
def test_token_mean_without_global_count_differs(num_micro):
    # The classic bug: each micro-batch divides by its own token count and the losses are averaged. The micro-batches
    # hold 14 and 20 tokens (2-way) or 6, 8, 11, 9 (4-way), so tokens of small micro-batches are over-weighted.
    model, x, mask = _setup()
    whole = _accumulated_grad(model, x, mask, "token-mean", 1, global_counts=True)
    buggy = _accumulated_grad(model, x, mask, "token-mean", num_micro, global_counts=False)
    assert (buggy - whole).abs().max() > 1e-3


def test_sum_norm_with_default_max_len_depends_on_padding():
    # with trimmed micro-batches, the default max_len (this call's T) changes the constant: pass max_len
    model, x, mask = _setup()
    whole = _accumulated_grad(model, x, mask, "seq-mean-token-sum-norm", 1, global_counts=True)
    model.zero_grad()
    for xs, ms in zip(x.chunk(4), mask.chunk(4)):
        t = max(int(ms.sum(-1).max()), 1)
        aggregate(model(xs[:, :t]).squeeze(-1), ms[:, :t], "seq-mean-token-sum-norm", num_seqs=N).backward()
    assert (_grads(model) - whole).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------- hypothesis properties
@st.composite
def loss_and_mask(draw):
    n, t = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(n, t, generator=gen, dtype=torch.float64)
    mask = (torch.rand(n, t, generator=gen) < 0.6).double()
    garbage = torch.randn(n, t, generator=gen, dtype=torch.float64) * 1e6
    garbage[0, 0] = draw(st.sampled_from([float("inf"), float("-inf"), float("nan"), 0.0]))
    return loss, mask, garbage


@settings(max_examples=60, deadline=None)
@given(data=loss_and_mask(), mode=st.sampled_from(MODES))
def test_padded_values_never_change_result_or_get_gradient(data, mode):
    loss, mask, garbage = data
    base = aggregate(loss, mask, mode)
    polluted = torch.where(mask.bool(), loss, garbage).requires_grad_(True)
    out = aggregate(polluted, mask, mode)
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(base.item(), rel=1e-12, abs=1e-12)
    out.backward()
    assert torch.all(polluted.grad[~mask.bool()] == 0)


@settings(max_examples=60, deadline=None)
@given(data=loss_and_mask(), mode=st.sampled_from(MODES), split=st.integers(1, 4))
def test_value_is_additive_over_row_splits_with_global_counts(data, mode, split):
    loss, mask, _ = data
    n, t = loss.shape
    counts = {"num_tokens": mask.sum(), "num_seqs": n, "max_len": t}
    whole = aggregate(loss, mask, mode, **counts)
    parts = sum(aggregate(lc, mc, mode, **counts) for lc, mc in zip(loss.chunk(split), mask.chunk(split)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=loss_and_mask(), mode=st.sampled_from(MODES))
def test_constant_loss_gives_expected_scale(data, mode):
    # a loss of 1 on every valid token: token-mean 1, seq-mean-token-mean = share of non-empty rows,
    # token-sum = tokens / rows, token-sum-norm = tokens / (rows * T)
    _, mask, _ = data
    n, t = mask.shape
    ones = torch.ones_like(mask)
    k = mask.sum().item()
    expected = {
        "token-mean": 1.0 if k > 0 else 0.0,
        "seq-mean-token-mean": (mask.sum(-1) > 0).double().mean().item(),
        "seq-mean-token-sum": k / n,
        "seq-mean-token-sum-norm": k / (n * t),
    }[mode]
    assert aggregate(ones, mask, mode).item() == pytest.approx(expected, rel=1e-12)
