"""Outcome-reward advantage estimators for group-sampled responses (one scalar per response).

Shapes: N responses (N = B*G when every prompt has G samples). Groups are given by ``group_index`` (N,), an integer
id per response, NOT by position: groups may have different sizes, arbitrary ids and any order. Every estimator is
vectorized with ``index_add``/``scatter_reduce`` over compacted group ids (no Python loop over groups).

Estimators (registry ``ADVANTAGE_ESTIMATORS``; equations also in ``docs/algorithms.md``):

- ``grpo``   (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300): ``(R_i - mean_g) / (std_g + eps)``.
  ``std_g`` is the UNBIASED (Bessel-corrected, divide by G-1) standard deviation, as ``torch.std`` in verl and TRL
  and in the released STEER code (a verl 0.4.1 fork); with G = 8 it is sqrt(8/7) ~ 1.07 times the population std.
- ``drgrpo`` (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783): ``R_i - mean_g``.
- ``rloo``   (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740): ``R_i - mean of the other G-1 rewards``.
- ``opo``    (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline", arXiv 2505.23585):
  ``R_i - sum_j |o_j| R_j / sum_j |o_j|`` with ``|o_j|`` the response length (needs ``lengths``).

Conventions shared by all estimators (departures from verl noted):

- A group whose rewards are all identical gets advantage exactly 0 (not merely ~1e-8), for every estimator.
- Consequently a group of size 1 gets 0. verl instead uses mean 0 and std 1 for a singleton group, i.e. A = R.
"""

from __future__ import annotations

import torch

from steer import choices
from steer.registry import Registry

__all__ = ["ADVANTAGE_ESTIMATORS", "compute_advantages"]

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator", choices.ADVANTAGE_ESTIMATORS)


def _groups(group_index: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Compact arbitrary group ids to ``0..K-1``. Returns ``(gid (N,) long, K)``."""
    uniq, gid = torch.unique(group_index, return_inverse=True)  # (K,), (N,)
    return gid, uniq.numel()


def _group_sum(x: torch.Tensor, gid: torch.Tensor, k: int) -> torch.Tensor:
    """Per-group sum of ``x`` (N,) -> (K,)."""
    return x.new_zeros(k).index_add_(0, gid, x)  # (K,)


def _group_count(rewards: torch.Tensor, gid: torch.Tensor, k: int) -> torch.Tensor:
    """Group sizes as floats in ``rewards``' dtype, (K,)."""
    return torch.bincount(gid, minlength=k).to(rewards.dtype)  # (K,)


def _constant_group(rewards: torch.Tensor, gid: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: True where the response's group has identical rewards (includes groups of size 1)."""
    gmax = rewards.new_zeros(k).scatter_reduce_(0, gid, rewards, "amax", include_self=False)  # (K,)
    gmin = rewards.new_zeros(k).scatter_reduce_(0, gid, rewards, "amin", include_self=False)  # (K,)
    return (gmax == gmin)[gid]  # (N,)


def _centered(rewards: torch.Tensor, gid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``R_i - mean_g`` (N,) and the group sizes (K,)."""
    count = _group_count(rewards, gid, k)  # (K,)
    mean = _group_sum(rewards, gid, k) / count  # (K,)
    return rewards - mean[gid], count  # (N,), (K,)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, *, lengths: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: ``(R - mean_g) / (std_g + eps)`` with the unbiased group std. (N,) -> (N,). ``lengths`` unused."""
    gid, k = _groups(group_index)
    centered, count = _centered(rewards, gid, k)  # (N,), (K,)
    var = _group_sum(centered.square(), gid, k) / (count - 1).clamp(min=1)  # (K,) unbiased (Bessel)
    adv = centered / (var.sqrt()[gid] + eps)  # (N,)
    return torch.where(_constant_group(rewards, gid, k), torch.zeros_like(adv), adv)


@ADVANTAGE_ESTIMATORS.register("drgrpo")
def drgrpo_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, *, lengths: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Dr.GRPO: ``R - mean_g`` (no division by the std). (N,) -> (N,). ``lengths`` and ``eps`` unused."""
    gid, k = _groups(group_index)
    centered, _ = _centered(rewards, gid, k)  # (N,)
    return torch.where(_constant_group(rewards, gid, k), torch.zeros_like(centered), centered)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, *, lengths: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """RLOO: ``R_i - (sum_g R - R_i) / (G - 1)``; a group of size 1 gets 0. (N,) -> (N,). ``lengths``/``eps`` unused."""
    gid, k = _groups(group_index)
    count = _group_count(rewards, gid, k)  # (K,)
    total = _group_sum(rewards, gid, k)  # (K,)
    baseline = (total[gid] - rewards) / (count[gid] - 1).clamp(min=1)  # (N,) leave-one-out mean
    adv = rewards - baseline  # (N,)
    return torch.where(_constant_group(rewards, gid, k), torch.zeros_like(adv), adv)


@ADVANTAGE_ESTIMATORS.register("opo")
def opo_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, *, lengths: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """OPO: ``R_i - sum_j |o_j| R_j / sum_j |o_j|`` (length-weighted group baseline). (N,) -> (N,). ``eps`` unused.

    ``lengths`` (N,) are the response lengths ``|o_j|`` (valid-token counts); they must be >= 0 and every group's
    total length must be > 0, else ``ValueError``. Departure: the OPO paper pairs this baseline with exactly
    on-policy training and a sequence-sum loss; here it is only the advantage, and the loss is chosen separately.
    """
    if lengths is None:
        raise ValueError("advantage estimator 'opo' needs `lengths` (N,): the response lengths |o_j|")
    gid, k = _groups(group_index)
    w = lengths.to(rewards.dtype)  # (N,)
    if bool((w < 0).any()):
        raise ValueError("`lengths` must be >= 0 for advantage estimator 'opo'")
    wsum = _group_sum(w, gid, k)  # (K,)
    if bool((wsum <= 0).any()):
        raise ValueError("`lengths` must sum to > 0 within every group for advantage estimator 'opo'")
    baseline = _group_sum(w * rewards, gid, k) / wsum  # (K,)
    adv = rewards - baseline[gid]  # (N,)
    return torch.where(_constant_group(rewards, gid, k), torch.zeros_like(adv), adv)


@ADVANTAGE_ESTIMATORS.register("w_reinforce")
def w_reinforce_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    eps: float = 1e-6,
    positive_weight: float = 0.1,
) -> torch.Tensor:
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347): ``positive_weight * R`` where R > 0, else ``R``; no group
    baseline, so ``group_index``, ``lengths`` and ``eps`` are unused. With +1/-1 rewards this is lambda-weighted
    positive-sample reinforcement (lambda = 0.1, the paper's value) plus full negative-sample reinforcement."""
    return torch.where(rewards > 0, positive_weight * rewards, rewards)


def compute_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    estimator: str = "grpo",
    lengths: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-response advantages from outcome rewards, normalised within groups.

    Args:
        rewards: (N,) float rewards, one per response (integer/bool rewards are cast to float32).
        group_index: (N,) integer group id per response (e.g. the prompt's index); any ids, any order, any sizes.
        estimator: a name in ``ADVANTAGE_ESTIMATORS``: ``grpo``, ``drgrpo``, ``rloo``, ``opo``, ``w_reinforce``.
        lengths: (N,) response lengths; required by ``opo``, ignored by the others.
        eps: added to the group std by ``grpo``.

    Returns:
        (N,) advantages in ``rewards``' floating dtype, without gradient history of their own (the inputs are
        outcome rewards). Broadcast to tokens as ``adv[:, None]`` (N, 1).
    """
    fn = ADVANTAGE_ESTIMATORS.get(estimator)
    if rewards.dim() != 1:
        raise ValueError(f"`rewards` must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_index.shape != rewards.shape:
        raise ValueError(f"`group_index` must have shape {tuple(rewards.shape)}, got {tuple(group_index.shape)}")
    if group_index.dtype.is_floating_point or group_index.dtype.is_complex or group_index.dtype == torch.bool:
        raise TypeError(f"`group_index` must be an integer tensor, got {group_index.dtype}")
    if lengths is not None and lengths.shape != rewards.shape:
        raise ValueError(f"`lengths` must have shape {tuple(rewards.shape)}, got {tuple(lengths.shape)}")
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.float32)
    if rewards.numel() == 0:
        return rewards.clone()
    return fn(rewards, group_index, lengths=lengths, eps=eps)
