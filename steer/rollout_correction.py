"""Train/inference mismatch correction: importance weights from the sampler's to the trainer's rollout policy.

The sampler (vLLM's kernels, another precision, a stale copy of the weights) draws a response from pi_sampler, while
the PPO ratio r = pi_theta / pi_old is taken against the trainer's pi_old. The gap is measured by
``steer.diagnostics.logp_mismatch``; these functions correct it with the importance ratio

    rho_t = pi_old(a_t|s_t) / pi_sampler(a_t|s_t) = exp(clamp(log p_old - log p_sampler, -20, 20))     (N, T)

at one of three levels (the names verl's rollout correction uses, ``rollout_is_level``):

- ``token``: rho_t itself;
- ``sequence``: rho_seq = exp(sum_t log rho_t), the product over the response's tokens (the unbiased sequence ratio,
  high-variance for long responses), broadcast to its tokens;
- ``geometric``: exp(mean_t log rho_t), the geometric mean (length-normalised, as GSPO's ratio).

and two modes (the registry ``ROLLOUT_CORRECTIONS``):

- ``truncate`` (truncated IS, TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
  training"): w = min(rho, C);
- ``mask`` (masked IS, MIS; Liu et al. 2025, "When speed kills stability", verl's ``mask`` mode): w = rho where
  1/C <= rho <= C, else 0: the outlying token (or the whole response) is dropped, the others corrected.

The weight is detached and multiplies the per-token loss (``steer.objective.Objective``). With C = inf and an
on-policy batch (sampler log-probs equal to the trainer's old log-probs) rho = exp(0) = 1 exactly, so the loss is the
uncorrected one bit for bit. Pure tensor functions, no config (docs/algorithms.md, section 3b).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from steer import choices
from steer.registry import Registry

LOG_RATIO_CLAMP = 20.0
CorrectionFn = Callable[[Tensor, float], tuple[Tensor, Tensor]]
ROLLOUT_CORRECTIONS: Registry[CorrectionFn] = Registry("rollout correction", choices.ROLLOUT_CORRECTIONS)
"""Mode -> ``(rho, threshold) -> (weights, outside)``: the weights and the bool (N, T) of ratios the mode acted on."""


@ROLLOUT_CORRECTIONS.register("truncate")
def truncated_is(rho: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """TIS: ``min(rho, C)``; ``outside`` marks the truncated ratios (rho > C). (N, T) each."""
    return rho.clamp(max=threshold), rho > threshold


@ROLLOUT_CORRECTIONS.register("mask")
def masked_is(rho: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """MIS: ``rho`` where ``1/C <= rho <= C``, else 0; ``outside`` marks the dropped ratios. (N, T) each."""
    outside = (rho > threshold) | (rho < 1.0 / threshold)
    return torch.where(outside, torch.zeros_like(rho), rho), outside


def importance_ratio(old_logp: Tensor, sampling_logp: Tensor, mask: Tensor, level: str) -> Tensor:
    """rho (N, T) at ``level`` (token, sequence, geometric), 1 on padding. old_logp, sampling_logp, mask: (N, T)."""
    valid = mask.bool()
    log_rho = torch.where(valid, old_logp - sampling_logp, torch.zeros_like(old_logp))  # (N, T)
    if level == "sequence":
        log_rho = log_rho.sum(-1, keepdim=True).expand_as(log_rho)  # (N, 1) -> (N, T)
    elif level == "geometric":
        lengths = valid.sum(-1, keepdim=True).clamp(min=1)  # (N, 1)
        log_rho = (log_rho.sum(-1, keepdim=True) / lengths).expand_as(log_rho)  # (N, T)
    elif level != "token":
        raise ValueError(f"level={level!r} is not one of: {', '.join(choices.IS_LEVELS)}")
    rho = torch.exp(log_rho.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (N, T)
    return torch.where(valid, rho, torch.ones_like(rho))


@torch.no_grad()
def rollout_correction_weights(
    old_logp: Tensor, sampling_logp: Tensor, mask: Tensor, *, mode: str, level: str = "token", threshold: float = 2.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Detached importance weights (N, T) for the per-token loss and their metrics (0-dim tensors).

    Args:
        old_logp: (N, T) under the trainer's rollout policy. sampling_logp: (N, T) the sampler's. mask: (N, T).
        mode: ``truncate`` (TIS) or ``mask`` (MIS). level: token, sequence (product) or geometric (mean log).
        threshold: C > 1 (inf: TIS never truncates, MIS never drops).
    Returns:
        weights (N, T), 1 on padding; metrics ``actor/rollout_is_weight_mean`` (mean w over valid tokens),
        ``actor/rollout_is_ratio_mean`` (mean rho), ``actor/rollout_is_truncated_frac`` or
        ``actor/rollout_is_masked_frac`` (share of valid tokens whose ratio the mode truncated or dropped).
    """
    if not threshold > 1.0:
        raise ValueError(f"threshold C must be > 1 (inf to never act), got {threshold}")
    valid = mask.bool()
    rho = importance_ratio(old_logp.detach(), sampling_logp.to(old_logp.dtype), mask, level)  # (N, T)
    weights, outside = ROLLOUT_CORRECTIONS.get(mode)(rho, threshold)
    weights = torch.where(valid, weights, torch.ones_like(weights))  # (N, T)
    n = valid.sum().clamp(min=1)
    share = "truncated" if mode == "truncate" else "masked"
    metrics = {
        "actor/rollout_is_weight_mean": torch.where(valid, weights.float(), 0.0).sum() / n,
        "actor/rollout_is_ratio_mean": torch.where(valid, rho, 0.0).sum() / n,
        f"actor/rollout_is_{share}_frac": (outside & valid).float().sum() / n,
    }
    return weights, metrics
