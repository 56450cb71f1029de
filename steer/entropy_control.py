"""Interventions steered by the rollout's entropy: adaptive entropy control and STARE's token weights.

Both read H_k, the token-mean entropy of rollout k under the rollout policy (``rollout/entropy``), which
``steer.objective.Objective.start_rollout`` measures once per rollout.

- ``AdaptiveEntropyCoef`` (Skywork-OR1, He et al. 2025, arXiv 2505.22312, "adaptive entropy control"): the entropy
  bonus coefficient is steered toward a target entropy. alpha_k = c_k * 1[H_k <= H_tgt] is applied at step k, then
  c_{k+1} = c_k + delta if H_k < H_tgt, c_k - delta if H_k > H_tgt, clamped to [0, coef_max]; c_0 = coef_init.
- ``stare_weights`` (Luo et al. 2026, "STARE", arXiv 2606.19236, reference code github.com/hp-luo/STARE): within the
  tokens with A > 0 the top ``top_ratio`` by surprisal -log p get weight W > 1 (variant O1); variant C2 also gives
  the top ``top_ratio`` of the A < 0 tokens weight M < 1. Gated: weights are 1 (GRPO) unless H_k < H_tgt.

Pure functions and one small stateful controller (its state is checkpointed through ``state_dict``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from steer.ops import token_advantages

__all__ = ["AdaptiveEntropyCoef", "stare_weights"]


class AdaptiveEntropyCoef:
    """Skywork-OR1's adaptive entropy coefficient: ``update(H_k)`` returns alpha_k and steps c toward the target."""

    def __init__(self, *, target_entropy: float, delta: float, coef_init: float = 0.0, coef_max: float = 1.0):
        self.target, self.delta, self.coef_max = target_entropy, delta, coef_max
        self.coef = coef_init  # c_k

    def update(self, entropy: float) -> float:
        """alpha_k = c_k 1[H_k <= target]; then c_{k+1} = clamp(c_k + delta sign(target - H_k), 0, coef_max)."""
        alpha = self.coef if entropy <= self.target else 0.0
        step = self.delta if entropy < self.target else -self.delta if entropy > self.target else 0.0
        self.coef = min(max(self.coef + step, 0.0), self.coef_max)
        return alpha

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = float(state.get("coef", self.coef))


def _top_surprisal(surprisal: Tensor, candidates: Tensor, top_ratio: float) -> Tensor:
    """The top ``ceil(top_ratio * n)`` (at least 1) of the ``n`` candidate tokens by surprisal: (N, T) bool."""
    n = int(candidates.sum())
    selected = torch.zeros_like(candidates)
    if n == 0 or top_ratio <= 0:
        return selected
    k = min(n, max(1, math.ceil(n * top_ratio - 1e-6)))  # the reference code's int(n * r + 0.999999)
    values = torch.where(candidates, surprisal, torch.full_like(surprisal, -math.inf)).flatten()
    selected.view(-1)[values.topk(k).indices] = True
    return selected


@torch.no_grad()
def stare_weights(
    logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    rollout_entropy: float | None,
    target_entropy: float = 0.3,
    top_ratio: float = 0.1,
    reweight_w: float = 1.1,
    reweight_m: float = 0.9,
    variant: str = "O1",
) -> Tensor:
    """STARE's token weights (N, T), detached; they multiply the per-token clipped surrogate.

    Args:
        logp: (N, T) current log-probs; surprisal is -logp. advantages: (N,) or (N, T). mask: (N, T).
        rollout_entropy: H_k of the rollout; the gate is on when H_k < target_entropy (None: on).
        top_ratio: P, the share of each advantage-sign subset reweighted (paper: 10%).
        reweight_w: W > 1 on L+ (A > 0, highest surprisal). reweight_m: M < 1 on L- (A < 0), variant C2 only.
        variant: O1 (one-sided, the paper's default) or C2 (dual-sided).
    Returns (N, T) weights: 1 on padding, everywhere when the gate is off.
    """
    weights = torch.ones_like(logp)
    if rollout_entropy is not None and not rollout_entropy < target_entropy:
        return weights  # gate off: GRPO
    adv = token_advantages(advantages, logp)
    valid = mask.bool()
    surprisal = -logp.detach()
    weights = torch.where(_top_surprisal(surprisal, valid & (adv > 0), top_ratio), reweight_w, weights)
    if variant == "C2":
        weights = torch.where(_top_surprisal(surprisal, valid & (adv < 0), top_ratio), reweight_m, weights)
    return weights
