"""Small tensor operations every piece of the library shares, written once.

Shapes: N responses, T response tokens; ``mask``/``valid`` (N, T) is 1/True on real tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """(N,) or (N, T) advantages -> (N, T) shaped like ``like``: a response's advantage broadcast to its tokens."""
    if advantages.dim() == 1 and advantages.shape[0] == like.shape[0]:
        return advantages[:, None].expand_as(like)  # (N,) -> (N, T)
    if advantages.shape != like.shape:
        raise ValueError(f"advantages must be (N,) or (N, T) = {tuple(like.shape)}, got {tuple(advantages.shape)}")
    return advantages


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` (N, T) over the ``valid`` (bool (N, T)) tokens; 0 when none is valid. -> ()."""
    return torch.where(valid, x, torch.zeros_like(x)).sum() / valid.sum().clamp(min=1)
