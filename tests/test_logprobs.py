"""Chunked log-probs/entropy against the naive reference: values, gradients, shapes, and a memory bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from steer.logprobs import (
    DEFAULT_CHUNK_SIZE,
    naive_logprobs_and_entropy,
    token_logprobs,
    token_logprobs_and_entropy,
)

pytestmark = pytest.mark.unit

ATOL = 1e-5


def _inputs(n=3, t=5, v=37, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, t, v, generator=g) * scale).to(dtype)  # (N, T, V)
    tokens = torch.randint(0, v, (n, t), generator=g)  # (N, T)
    w_logp, w_ent = torch.randn(n, t, generator=g), torch.randn(n, t, generator=g)  # (N, T) loss weights
    return logits, tokens, w_logp, w_ent


def _value_and_grads(fn, logits, tokens, w_logp, w_ent, **kw):
    """Outputs of ``fn`` and the gradient of ``sum(w_logp * logp + w_ent * entropy)`` w.r.t. fp32 logits."""
    leaf = logits.detach().clone().requires_grad_()
    logp, ent = fn(leaf, tokens, **kw)
    (grad,) = torch.autograd.grad((w_logp * logp).sum() + (w_ent * ent).sum(), leaf)
    return logp.detach(), ent.detach(), grad


def test_hand_computed_uniform_and_onehot():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])  # (1, 2, 4)
    tokens = torch.tensor([[2, 0]])
    logp, ent = token_logprobs_and_entropy(logits, tokens, chunk_size=1)
    torch.testing.assert_close(logp, torch.tensor([[-math.log(4), 0.0]]), atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, torch.tensor([[math.log(4), 0.0]]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 15, 64])  # N*T = 15: divides, does not divide, equals, exceeds
def test_matches_naive_values_and_grads_fp32(temperature, chunk_size):
    args = _inputs()
    got = _value_and_grads(token_logprobs_and_entropy, *args, temperature=temperature, chunk_size=chunk_size)
    want = _value_and_grads(naive_logprobs_and_entropy, *args, temperature=temperature)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def test_matches_naive_with_large_logits():
    """LM logits sit far from 0 (and lse with them): the recomputed log p must not lose precision."""
    logits, tokens, w_logp, w_ent = _inputs(v=1000, scale=8.0)
    logits = logits + 40.0  # (N, T, V)
    got = _value_and_grads(token_logprobs_and_entropy, logits, tokens, w_logp, w_ent, temperature=0.7, chunk_size=4)
    want = _value_and_grads(naive_logprobs_and_entropy, logits, tokens, w_logp, w_ent, temperature=0.7)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_masked_vocabulary_gives_finite_entropy_logprobs_and_grads(dtype, chunk_size):
    """-inf logits (a masked vocabulary): finite outputs equal to the unmasked sub-vocabulary's, zero grad there."""
    logits, tokens, w_logp, w_ent = _inputs(v=12)
    keep = torch.tensor([0, 2, 3, 5, 7, 8, 11])  # 5 of 12 entries masked, in every row
    tokens = keep[tokens % len(keep)]  # (N, T) sampled tokens are never masked
    masked = torch.full_like(logits, -math.inf)
    masked[..., keep] = logits[..., keep]
    masked = masked.to(dtype)
    got = _value_and_grads(token_logprobs_and_entropy, masked, tokens, w_logp, w_ent, chunk_size=chunk_size)
    remap = torch.full((12,), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    sub = masked.float()[..., keep]  # (N, T, 7) the vocabulary left
    want = _value_and_grads(naive_logprobs_and_entropy, sub, remap[tokens], w_logp, w_ent)
    for g in got:
        assert torch.isfinite(g).all()
    torch.testing.assert_close(got[0], want[0], atol=ATOL, rtol=0)  # log-probs
    torch.testing.assert_close(got[1], want[1], atol=ATOL, rtol=0)  # entropies
    torch.testing.assert_close(
        got[2][..., keep].float(), want[2], atol=1e-2 if dtype != torch.float32 else ATOL, rtol=0
    )
    drop = torch.ones(12, dtype=torch.bool)
    drop[keep] = False
    assert (got[2][..., drop] == 0).all()  # no probability mass there, no gradient either
    assert torch.isnan(naive_logprobs_and_entropy(masked, tokens)[1]).all()  # what the clamp avoids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_naive_low_precision_input(dtype):
    logits, tokens, w_logp, w_ent = _inputs(dtype=dtype)
    leaf = logits.clone().requires_grad_()
    logp, ent = token_logprobs_and_entropy(leaf, tokens, temperature=0.8, chunk_size=4)
    assert logp.dtype == ent.dtype == torch.float32
    (grad,) = torch.autograd.grad((w_logp * logp).sum() + (w_ent * ent).sum(), leaf)
    assert grad.dtype == dtype
    # reference on the same values, upcast, so the fp32 math must agree to 1e-5
    want_logp, want_ent, want_grad = _value_and_grads(
        naive_logprobs_and_entropy, logits.float(), tokens, w_logp, w_ent, temperature=0.8
    )
    torch.testing.assert_close(logp, want_logp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, want_ent, atol=ATOL, rtol=0)
    # the gradient is returned in the logits' dtype: equal up to that dtype's rounding
    torch.testing.assert_close(grad.float(), want_grad, atol=ATOL, rtol=2**-7)


def test_each_output_alone_is_differentiable():
    args = _inputs(seed=1)
    logits, tokens, w_logp, w_ent = args
    zero = torch.zeros_like(w_logp)
    for wl, we in [(w_logp, zero), (zero, w_ent)]:
        for fn_kw in [{}, {"temperature": 0.5}]:
            leaf = logits.clone().requires_grad_()
            logp, ent = token_logprobs_and_entropy(leaf, tokens, chunk_size=4, **fn_kw)
            loss = (wl * logp).sum() if we is zero else (we * ent).sum()  # the other output gets no grad (None)
            (got,) = torch.autograd.grad(loss, leaf)
            want = _value_and_grads(naive_logprobs_and_entropy, logits, tokens, wl, we, **fn_kw)[2]
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_token_logprobs_matches_and_grads():
    logits, tokens, w_logp, _ = _inputs(seed=2)
    leaf = logits.clone().requires_grad_()
    logp = token_logprobs(leaf, tokens, temperature=1.3, chunk_size=6)
    (got,) = torch.autograd.grad((w_logp * logp).sum(), leaf)
    want = _value_and_grads(
        naive_logprobs_and_entropy, logits, tokens, w_logp, torch.zeros_like(w_logp), temperature=1.3
    )
    torch.testing.assert_close(logp.detach(), want[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got, want[2], atol=ATOL, rtol=0)


def test_shapes_noncontiguous_and_no_grad():
    logits, tokens, *_ = _inputs(n=4, t=6, v=9)
    transposed = logits.transpose(0, 1).contiguous().transpose(0, 1)  # same values, non-contiguous (N, T, V)
    logp, ent = token_logprobs_and_entropy(transposed, tokens, chunk_size=5)
    assert logp.shape == ent.shape == (4, 6)
    want_logp, want_ent = naive_logprobs_and_entropy(logits, tokens)
    torch.testing.assert_close(logp, want_logp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, want_ent, atol=ATOL, rtol=0)
    with torch.no_grad():
        logp, ent = token_logprobs_and_entropy(logits.requires_grad_(), tokens)
    assert not logp.requires_grad and not ent.requires_grad


def test_rejects_bad_arguments():
    logits, tokens, *_ = _inputs()
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(logits, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_and_entropy(logits, tokens, chunk_size=0)
    with pytest.raises(ValueError, match="must match"):
        token_logprobs_and_entropy(logits, tokens[:, :-1])


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    t=st.integers(1, 6),
    v=st.integers(2, 50),
    chunk=st.integers(1, 30),
    temperature=st.floats(0.3, 3.0),
    seed=st.integers(0, 2**16),
)
def test_property_parity_and_bounds(n, t, v, chunk, temperature, seed):
    logits, tokens, *_ = _inputs(n, t, v, seed=seed)
    logp, ent = token_logprobs_and_entropy(logits, tokens, temperature=temperature, chunk_size=chunk)
    want_logp, want_ent = naive_logprobs_and_entropy(logits, tokens, temperature=temperature)
    torch.testing.assert_close(logp, want_logp, atol=ATOL, rtol=0)
    torch.testing.assert_close(ent, want_ent, atol=ATOL, rtol=0)
    assert (logp <= ATOL).all()
    assert (ent >= -ATOL).all() and (ent <= math.log(v) + ATOL).all()


class _AllocationRecorder(TorchDispatchMode):
    """Records (numel, dtype) of every new tensor storage an aten op produces (views and in-place ops excluded)."""

    def __init__(self):
        super().__init__()
        self.allocations: list[tuple[int, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for o in tree_leaves(out):
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in seen:
                self.allocations.append((o.untyped_storage().nbytes() // o.element_size(), o.dtype))
        return out


@pytest.mark.parametrize("with_entropy", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_no_full_size_intermediate(dtype, with_entropy):
    """Forward allocates nothing bigger than chunk * V; backward allocates one (N*T, V) tensor: the gradient.

    The recorder sees every tensor an aten op returns, not temporaries inside one op (the benchmark's RSS and CUDA
    peaks cover those).
    """
    n, t, v, chunk = 4, 8, 101, 5  # N*T = 32 rows, chunk does not divide it
    logits, tokens, w_logp, w_ent = _inputs(n, t, v, dtype=dtype)
    leaf = logits.clone().requires_grad_()
    with _AllocationRecorder() as fwd:
        if with_entropy:
            logp, ent = token_logprobs_and_entropy(leaf, tokens, temperature=0.7, chunk_size=chunk)
        else:
            logp, ent = token_logprobs(leaf, tokens, temperature=0.7, chunk_size=chunk), torch.zeros(())
    loss = (w_logp * logp).sum() + (w_ent * ent).sum()
    with _AllocationRecorder() as bwd:
        loss.backward()
    assert max(numel for numel, _ in fwd.allocations) <= chunk * v
    big = [(numel, dt) for numel, dt in bwd.allocations if numel > chunk * v]
    assert big == [(n * t * v, dtype)]  # the gradient itself, in the logits' dtype; no fp32 (N*T, V) copy

    # positive control: the recorder does see the naive path's full-size fp32 tensors
    with _AllocationRecorder() as naive:
        naive_logprobs_and_entropy(leaf, tokens, temperature=0.7)
    assert sum(numel == n * t * v and dt == torch.float32 for numel, dt in naive.allocations) >= 3


def test_default_chunk_size_is_positive_int():
    assert isinstance(DEFAULT_CHUNK_SIZE, int) and DEFAULT_CHUNK_SIZE >= 1
