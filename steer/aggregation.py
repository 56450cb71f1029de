"""Aggregation of a per-token loss matrix (N, T) into the scalar that is back-propagated.

Shapes: N sequences (rows) in this call, T padded response tokens; ``mask`` (N, T) is 1 on real tokens and 0 on
padding (bool or float). Positions where ``mask`` is 0 are excluded with ``torch.where``, so their values (even
inf/NaN) never reach the result.

Modes (registry ``AGGREGATIONS``; equations also in ``docs/algorithms.md``):

- ``token-mean`` (DAPO, Yu et al. 2025, arXiv 2503.14476): ``sum_{i,t} m l / num_tokens``.
- ``seq-mean-token-mean`` (original GRPO, Shao et al. 2024, arXiv 2402.03300):
  ``sum_i [sum_t m l / sum_t m] / num_seqs``; a row with no valid token contributes 0.
- ``seq-mean-token-sum``: ``sum_{i,t} m l / num_seqs``.
- ``seq-mean-token-sum-norm`` (Dr.GRPO, Liu et al. 2025, arXiv 2503.20783):
  ``sum_{i,t} m l / (num_seqs * max_len)`` with a constant ``max_len`` (e.g. the generation budget).
  Departure: verl 0.4.1 (and the released STEER code) divides by ``T`` only, not by ``num_seqs * T``; the two
  differ by the constant factor ``num_seqs`` (an effective learning-rate scale).

Gradient accumulation. A mini-batch is often split into micro-batches whose losses are back-propagated one by one.
The gradient is independent of the split only if every micro-batch divides by the MINI-BATCH's counts: the caller
passes ``num_tokens`` (valid tokens in the whole mini-batch), ``num_seqs`` (sequences in the mini-batch) and a fixed
``max_len``, and sums (does not average) the micro-batch losses. The defaults (this call's counts, ``max_len = T``)
are right only when the call sees the whole mini-batch. Dividing each micro-batch's local token-mean by the number
of micro-batches is the recurring bug of verl, TRL and open-instruct: it over-weights tokens of short micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from steer import choices
from steer.registry import Registry

__all__ = ["AGGREGATIONS", "aggregate"]

Count = int | float | torch.Tensor
AggregationFn = Callable[..., torch.Tensor]

AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation", choices.AGGREGATIONS)


def _masked(loss_mat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``loss_mat`` with padded positions replaced by 0, (N, T)."""
    return torch.where(mask.bool(), loss_mat, torch.zeros_like(loss_mat))  # (N, T)


@AGGREGATIONS.register("token-mean")
def token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, max_len: Count):
    """``sum(m * l) / num_tokens``: every valid token of the mini-batch weighs the same. (N, T) -> ()."""
    return _masked(loss_mat, mask).sum() / num_tokens


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(
    loss_mat: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, max_len: Count
):
    """Mean over sequences of each sequence's token mean; empty rows contribute 0. (N, T) -> ()."""
    seq_sum = _masked(loss_mat, mask).sum(dim=-1)  # (N,)
    seq_len = mask.to(loss_mat.dtype).sum(dim=-1).clamp(min=1)  # (N,)
    return (seq_sum / seq_len).sum() / num_seqs


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(
    loss_mat: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, max_len: Count
):
    """Mean over sequences of each sequence's token sum. (N, T) -> ()."""
    return _masked(loss_mat, mask).sum() / num_seqs


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss_mat: torch.Tensor, mask: torch.Tensor, *, num_tokens: Count, num_seqs: Count, max_len: Count
):
    """Dr.GRPO: sum of token sums / (num_seqs * max_len), a constant denominator. (N, T) -> ()."""
    return _masked(loss_mat, mask).sum() / (num_seqs * max_len)


def aggregate(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: Count | None = None,
    num_seqs: Count | None = None,
    max_len: Count | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    Args:
        loss_mat: (N, T) per-token loss (already multiplied by any token weights).
        mask: (N, T) 1 on valid tokens, 0 on padding.
        mode: a name in ``AGGREGATIONS``.
        num_tokens: denominator of ``token-mean``; pass the mini-batch's valid-token count when this call sees one
            micro-batch. Default: ``mask.sum()`` of this call. A count of 0 is treated as 1 (the loss is then 0).
        num_seqs: number of sequences of the mini-batch, for the ``seq-mean-*`` modes. Default: N of this call.
        max_len: the constant of ``seq-mean-token-sum-norm`` (e.g. the maximum response length). Default: T of this
            call, which changes with padding; pass a fixed value when micro-batches are padded separately.

    Each mode reads only the counts it needs; the others are accepted and ignored, so a caller can always pass all
    three global counts.

    Returns:
        () scalar tensor, differentiable w.r.t. ``loss_mat``.
    """
    fn = AGGREGATIONS.get(mode)
    if loss_mat.dim() != 2 or mask.shape != loss_mat.shape:
        raise ValueError(
            f"`loss_mat` and `mask` must both be (N, T); got {tuple(loss_mat.shape)} and {tuple(mask.shape)}"
        )
    if num_tokens is None:
        num_tokens = mask.to(loss_mat.dtype).sum()
    if num_seqs is None:
        num_seqs = loss_mat.shape[0]
    if max_len is None:
        max_len = loss_mat.shape[1]
    num_tokens = _at_least_one(num_tokens)
    num_seqs = _at_least_one(num_seqs)
    max_len = _at_least_one(max_len)
    return fn(loss_mat, mask, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


def _at_least_one(count: Count) -> Count:
    """Guard a denominator against 0 (an empty batch gives loss 0, not NaN)."""
    if isinstance(count, torch.Tensor):
        return count.clamp(min=1)
    return max(count, 1)
