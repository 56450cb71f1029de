"""The other entropy interventions of the STEER paper's comparison table, as pure functions.

- Fork tokens / "80-20" (Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL
  for LLM Reasoning", arXiv 2506.01939): the policy gradient flows only through the top-rho highest-entropy tokens.
- Entropy-aware advantage (Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective",
  arXiv 2506.14758): a clipped, detached entropy bonus added to the advantage of every token.

W-REINFORCE (Zhu et al. 2025) is an advantage estimator (``steer.advantages``, ``w_reinforce``) paired with the
unclipped ``reinforce`` loss (``steer.losses``). Each function here is registered by name in ``TOKEN_WEIGHTINGS``
((N, T) loss weights) or ``ADVANTAGE_SHAPINGS`` ((N, T) advantages). Equations: ``docs/algorithms.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from steer.ops import token_advantages
from steer.registry import Registry

TOKEN_WEIGHTINGS: Registry = Registry("token weighting")
ADVANTAGE_SHAPINGS: Registry = Registry("advantage shaping")


@TOKEN_WEIGHTINGS.register("fork_tokens")
@torch.no_grad()
def fork_token_weights(entropy: Tensor, mask: Tensor, *, top_rho: float = 0.2) -> Tensor:
    """1 on the top-``top_rho`` fraction of valid tokens by entropy, 0 elsewhere (Wang et al. 2025).

    The cut is taken over all valid tokens passed in (the paper takes it per batch), k = ceil(top_rho * n_valid);
    ties at the threshold entropy are all kept.

    Args:
        entropy: (N, T) H(s_t). mask: (N, T) 1 on real tokens.
        top_rho: fraction of tokens that keep their gradient, in (0, 1].
    Returns:
        (N, T) 0/1 weights (padding gets 0; it carries no loss anyway).
    """
    if not 0.0 < top_rho <= 1.0:
        raise ValueError(f"top_rho must be in (0, 1], got {top_rho}")
    valid = mask.bool()
    n_valid = int(valid.sum())
    if n_valid == 0:
        return torch.zeros_like(entropy)
    k = max(1, math.ceil(top_rho * n_valid))
    threshold = entropy[valid].topk(k).values.min()  # the k-th largest entropy
    return ((entropy >= threshold) & valid).to(entropy.dtype)


@ADVANTAGE_SHAPINGS.register("entropy_aware")
@torch.no_grad()
def entropy_aware_advantages(
    advantages: Tensor, entropy: Tensor, mask: Tensor, *, alpha: float = 0.4, kappa: float = 2.0
) -> Tensor:
    """A_t + min(alpha * H_t, |A_t| / kappa) (Cheng et al. 2025), entropy detached.

    The clip keeps the bonus from flipping the sign of a negative advantage (kappa > 1) and from dominating.
    Tokens of a response with A = 0 get no bonus, as in the paper (the bonus is bounded by |A| / kappa).

    Args:
        advantages: (N,) or (N, T). entropy, mask: (N, T).
    Returns:
        (N, T) shaped advantages, 0 on padding.
    """
    adv = token_advantages(advantages, entropy)  # (N, T)
    bonus = torch.minimum(alpha * entropy, adv.abs() / kappa)
    return (adv + bonus) * mask
