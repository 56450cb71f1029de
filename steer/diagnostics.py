"""Per-step metrics of a rollout (``reward/*``, ``rollout/*``): what was sampled and how it scored.

Names are documented in docs/metrics.md. Pure functions of tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def rollout_metrics(
    rewards: Tensor, correct: Tensor, group_index: Tensor, response_mask: Tensor, truncated: Tensor
) -> dict[str, float]:
    """Args: rewards (N,), correct (N,) bool, group_index (N,), response_mask (N, T), truncated (N,) bool."""
    lengths = response_mask.sum(-1)  # (N,)
    _, gid = torch.unique(group_index, return_inverse=True)
    k = int(gid.max()) + 1
    acc = torch.zeros(k).index_add_(0, gid, correct.float()) / torch.bincount(gid, minlength=k)  # (K,)
    solved_all, solved_none = (acc == 1).float().mean(), (acc == 0).float().mean()
    return {
        "reward/mean": float(rewards.float().mean()),
        "reward/std": float(rewards.float().std(unbiased=False)),
        "reward/accuracy": float(correct.float().mean()),
        "reward/group_all_correct_frac": float(solved_all),
        "reward/group_all_wrong_frac": float(solved_none),
        # groups with identical rewards get A = 0 and carry no gradient
        "rollout/zero_adv_group_frac": float(solved_all + solved_none),
        "rollout/response_length_mean": float(lengths.float().mean()),
        "rollout/response_length_max": float(lengths.max()),
        "rollout/truncated_frac": float(truncated.float().mean()),
        "rollout/num_tokens": float(lengths.sum()),
    }


@torch.no_grad()
def logp_mismatch(sampling_logp: Tensor | None, trainer_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Train/inference mismatch: token mean of |log p_sampler - log p_trainer| for the same tokens, (N, T) each.
    Near 0 for the hf backend (same model and kernels); vLLM's kernels and precision make it larger."""
    if sampling_logp is None:
        return {}
    diff = (sampling_logp.to(trainer_logp.device) - trainer_logp).abs() * mask
    return {"rollout/logp_mismatch": float(diff.sum() / mask.sum().clamp(min=1))}
