"""Per-token log-probabilities and entropies of sampled tokens, computed in chunks of rows.

Every RLVR loss needs ``log pi(y_t | y_<t)`` for the sampled tokens and, for entropy bonuses and STEER, the entropy
``H_t = -sum_v p_v log p_v`` of the next-token distribution. The naive computation (``naive_logprobs_and_entropy``)
upcasts the whole ``(N, T, V)`` logits to fp32 and materialises several fp32 ``(N, T, V)`` tensors; with the
Qwen2.5 vocabulary (V = 151,936) and N*T = 4,096 tokens each of them is 2.5 GB, and autograd keeps some for backward.

Here the logits are viewed as ``R = N*T`` rows of length V and processed ``chunk_size`` rows at a time:

* forward: each chunk is copied into a reused fp32 ``(chunk_size, V)`` workspace, shifted by its row max and divided
  by the temperature there (never ``logits.float()`` or ``logits / tau`` on the whole tensor); its log-sum-exp, the
  sampled token's log-prob and the entropy are reduced to one number per row. Extra peak memory: two fp32
  ``(chunk_size, V)`` workspaces, allocated once per call, plus ``O(R)`` per-row statistics.
* backward (a custom ``torch.autograd.Function``): only the logits (which autograd holds anyway), the tokens and per
  row the max logit, log Z and the entropy are saved. Each chunk's softmax is recomputed from the logits and

      d logp_t / d x_v = 1[v = y_t] - p_v,        d H_t / d x_v = -p_v (log p_v + H_t),      x = logits / tau

  (times ``1 / tau`` for the logits) is built in fp32 in two reused workspaces and cast into the ``(N, T, V)``
  gradient, which has the logits' dtype and is the only full-size tensor.

This is the chunked, recompute-in-backward scheme of fused cross-entropy kernels (e.g. Liger-Kernel's, Hsu et al.
2024, arXiv:2410.10989) extended with the entropy, in plain torch; it does not fuse the LM head, so the caller's
logits and their gradient remain full-size. Double backward is not supported.

Masked vocabularies (some logits -inf, at least one finite per row) give finite log-probs and entropies and a zero
gradient on the masked entries (``X_FLOOR``); the naive reference gives NaN entropies there.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 256
"""Rows per chunk. At V = 151,936 one fp32 ``(256, V)`` workspace is 0.145 GiB, so the extra peak is ~0.29 GiB
whatever N*T is (naive at N*T = 4,096: 7.0 GiB forward, 11.6 GiB forward+backward). On an H200
(bench/bench_logprobs.py, bf16, N*T = 16,384) 256 rows ran at 0.94x (fwd) / 0.77x (fwd+bwd) the naive time;
512-1024 rows are ~10% faster still at 2-4x the workspace, smaller chunks leave the GPU under-used."""


X_FLOOR = -1e4
"""Where the entropy is computed, shifted scaled logits ``x - max x`` are clamped to at least this (after the sampled
token's log-prob is read). ``exp`` of anything below about -104 is exactly 0 in fp32, so finite inputs give bitwise
the same entropy and log-probs, while a masked vocabulary (-inf logits) gives ``p log p = 0`` instead of
``0 * -inf = NaN`` and a zero gradient there. The sampled token's log-prob is finite whenever its logit is."""


def naive_logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation (used by tests and the benchmark): full-size fp32 log-softmax.

    Args:
        logits: (N, T, V) any float dtype.
        tokens: (N, T) long, sampled token ids in ``[0, V)``.
        temperature: the sampling temperature tau; probabilities are ``softmax(logits / tau)``.

    Returns:
        ``(logp, entropy)``, both (N, T) fp32.
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)  # (N, T, V) fp32
    logp = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (N, T)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    return logp, entropy


def _scaled_shifted(chunk: torch.Tensor, row_max: torch.Tensor, temperature: float, out: torch.Tensor) -> torch.Tensor:
    """``x - max(x)`` with ``x = chunk / temperature``, written into the fp32 workspace ``out``.

    chunk, out (C, V); row_max (C, 1) fp32 max of ``chunk``. Forward and backward both call this, so the log-probs
    recomputed in backward are bitwise those of forward.
    """
    inv_tau = 1.0 / temperature
    shift = row_max * -inv_tau  # (C, 1)
    if chunk.is_cuda or chunk.dtype == torch.float32:
        return torch.add(shift, chunk, alpha=inv_tau, out=out)  # one pass, upcast fused on GPU
    out.copy_(chunk)  # on CPU a mixed-dtype add takes a slow path: upcast first
    return torch.add(shift, out, alpha=inv_tau, out=out)


class _ChunkedLogprobs(torch.autograd.Function):
    """Autograd function over flattened rows: logits (R, V), tokens (R,) -> logp (R,), entropy (R,) fp32.

    Saved for backward: the logits (no copy), tokens, and per row the max logit, log Z = lse(x - max x) and H.
    Each pass allocates its fp32 (chunk_size, V) workspaces once and reuses them for every chunk (on CPU a fresh
    large buffer per chunk costs page faults comparable to the arithmetic).
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk_size, with_entropy):
        rows, vocab = logits.shape
        logp = logits.new_empty(rows, dtype=torch.float32)  # (R,)
        row_max = logits.new_empty(rows, dtype=torch.float32)  # (R,) max logit (unscaled)
        log_z = logits.new_empty(rows, dtype=torch.float32)  # (R,) lse(x - max x)
        entropy = logits.new_empty(rows if with_entropy else 0, dtype=torch.float32)  # (R,) or (0,)
        ws_x = logits.new_empty(min(chunk_size, rows), vocab, dtype=torch.float32)  # (C, V) workspace
        ws_e = torch.empty_like(ws_x) if with_entropy else None  # (C, V) workspace
        for s in range(0, rows, chunk_size):
            e = min(s + chunk_size, rows)
            chunk = logits[s:e]  # (C, V) view
            row_max[s:e] = chunk.amax(dim=-1)
            x = _scaled_shifted(chunk, row_max[s:e, None], temperature, ws_x[: e - s])  # (C, V) x - max(x)
            logp[s:e] = x.gather(1, tokens[s:e, None]).squeeze(1)  # shifted logit of the token; minus log Z below
            if with_entropy:
                x.clamp_(min=X_FLOOR)  # masked (-inf) logits: p log p = 0 * X_FLOOR = 0, not 0 * -inf = NaN
            ex = torch.exp(x, out=ws_e[: e - s]) if with_entropy else x.exp_()  # (C, V) unnormalised probs
            z = ex.sum(dim=-1)  # (C,)
            log_z[s:e] = z.log()
            logp[s:e] -= log_z[s:e]
            if with_entropy:
                # H = log Z - sum_v p_v x_v  (x shifted; sum_v p_v = 1, so the shift cancels)
                entropy[s:e] = log_z[s:e] - ex.mul_(x).sum(dim=-1) / z
        ctx.save_for_backward(logits, tokens, row_max, log_z, entropy)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_entropy):
        logits, tokens, row_max, log_z, entropy = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (g_logp is None and g_entropy is None):
            return None, None, None, None, None
        tau, chunk_size = ctx.temperature, ctx.chunk_size
        rows, vocab = logits.shape
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)  # (R, V) logits' dtype
        ws_x = logits.new_empty(min(chunk_size, rows), vocab, dtype=torch.float32)  # (C, V) workspace
        ws_g = torch.empty_like(ws_x) if g_entropy is not None else None  # (C, V) workspace
        for s in range(0, rows, chunk_size):
            e = min(s + chunk_size, rows)
            tok = tokens[s:e, None]  # (C, 1)
            x = _scaled_shifted(logits[s:e], row_max[s:e, None], tau, ws_x[: e - s])  # (C, V) as in forward
            if g_entropy is not None:
                x.clamp_(min=X_FLOOR)  # as in forward: a masked logit's gradient is exp(x) * g = 0, not 0 * inf
            lz = log_z[s:e, None]  # (C, 1); p = exp(x) / Z, log p = x - log Z
            gl = g_logp[s:e, None] if g_logp is not None else torch.zeros_like(lz)  # (C, 1)
            # dL/dlogits = (-p * (g_logp + g_H * (log p + H)) + g_logp * onehot(y)) / tau
            #            = exp(x) * g + onehot(y) * g_logp / tau,  g = a * x + b with per-row a, b (1 / (tau Z) folded
            # in): one fused pass for g, one multiply by exp(x)
            inv = torch.exp(-lz) / tau  # (C, 1) 1 / (tau Z)
            if g_entropy is not None:
                gh = g_entropy[s:e, None]  # (C, 1)
                b = -(gl + gh * (entropy[s:e, None] - lz)) * inv  # (C, 1)
                g = torch.addcmul(b, x, -gh * inv, out=ws_g[: e - s])  # (C, V) fp32
            else:
                g = (-gl * inv).expand_as(x)  # (C, V) broadcast view, no allocation
            at_token = g.gather(1, tok) * x.gather(1, tok).exp() + gl / tau  # (C, 1) incl. the one-hot term
            x.exp_().mul_(g).scatter_(1, tok, at_token)  # (C, V) fp32 gradient of the chunk, in place
            grad[s:e] = x  # cast to the logits' dtype (an out= with a cast would hide a (C, V) fp32 temporary)
        return grad, None, None, None, None


def _check(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_size: int) -> None:
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a float tensor, got {logits.dtype}")
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must match logits {tuple(logits.shape)} without V")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _run(logits, tokens, temperature, chunk_size, with_entropy):
    _check(logits, tokens, temperature, chunk_size)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, vocab)  # (R, V), R = N*T; a view when logits are contiguous
    logp, entropy = _ChunkedLogprobs.apply(
        flat, tokens.reshape(-1).long(), float(temperature), int(chunk_size), with_entropy
    )  # (R,), (R,) or (0,)
    return logp.view(lead), entropy.view(lead) if with_entropy else None  # (N, T)


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each sampled token and the entropy of each next-token distribution, chunked.

    ``logp = log softmax(logits / tau)[tokens]`` and ``entropy = -sum_v p_v log p_v`` with ``p = softmax(logits /
    tau)``, equal to ``naive_logprobs_and_entropy`` (to fp32 rounding) but with extra peak memory
    O(chunk_size * V) in forward and backward instead of several fp32 copies of the logits (see the module
    docstring). Both outputs are differentiable w.r.t. ``logits``; the gradient has the logits' dtype.

    Args:
        logits: (N, T, V) fp32, bf16 or fp16 (any leading shape works). Non-contiguous logits are copied once, in
            their own dtype, by ``reshape``.
        tokens: (N, T) integer ids in ``[0, V)`` (padding positions need a valid id; mask them in the loss).
        temperature: tau > 0, the temperature the tokens were sampled at.
        chunk_size: rows of the flattened (N*T, V) logits processed at once; memory/speed trade-off.

    Returns:
        ``(logp, entropy)``, both (N, T) fp32.
    """
    return _run(logits, tokens, temperature, chunk_size, with_entropy=True)


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """``token_logprobs_and_entropy`` without the entropy: fewer passes per chunk and one fp32 workspace, not two.

    Args and memory bound as in ``token_logprobs_and_entropy``. Returns logp (N, T) fp32.
    """
    logp, _ = _run(logits, tokens, temperature, chunk_size, with_entropy=False)
    return logp
