"""Two recent policy losses, registered in ``steer.losses.POLICY_LOSSES``: GSPO and CISPO.

- ``gspo`` (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): the importance ratio and its
  clip act on whole sequences, s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|), the length-normalised sequence ratio.
- ``cispo`` (MiniMax 2025, "MiniMax-M1", arXiv 2506.13585): REINFORCE weighted by the clipped, detached token-level
  importance ratio, so no token's gradient is ever dropped by the clip.

Same signature and conventions as ``steer.losses`` (shapes: N sequences, T padded tokens; ``loss_mat`` (N, T);
metrics are detached 0-dim masked means over this call's valid tokens). Equations: docs/algorithms.md section 3.
"""

from __future__ import annotations

import torch

from steer.losses import (
    LOG_RATIO_CLAMP,
    LossOut,
    _check_shapes,
    _dual_clip_enabled,
    _log_ratio,
    _metric_mean,
    _register_policy_loss,
)
from steer.ops import token_advantages

__all__ = ["cispo_loss", "gspo_loss"]


@_register_policy_loss("gspo")
def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    dual_clip_c: float | None = None,
    generator: torch.Generator | None = None,
) -> LossOut:
    """GSPO's sequence-level clipped surrogate, in its token form (GSPO-token, the paper's eq. for per-token A).

    ``log s_i = (1/|y_i|) sum_t (log p - log p_old)`` over the sequence's valid tokens; per token
    ``s_{i,t} = sg(s_i) * p_t / sg(p_t)``, equal to ``s_i`` in value with gradient ``s_i grad log p_t``;
    ``l_{i,t} = max(-A s_{i,t}, -A clip(s_{i,t}, 1 - eps_low, 1 + eps_high))`` (the paper's eps: 3e-4 / 4e-4), and
    for A < 0 with ``dual_clip_c`` set, ``min(l, -A c)``. With ``seq-mean-token-mean`` aggregation (the ``gspo``
    preset) the loss is the paper's ``(1/G) sum_i min(s_i A_i, clip(s_i) A_i)``; with a per-sequence A every token
    of a sequence is clipped or not together. ``generator`` is unused. -> (N, T), metrics ``actor/clipfrac``
    (share of tokens in clipped sequences), ``actor/seq_ratio_mean`` (mean s_i over valid tokens), ``actor/ppo_kl``.
    """
    _check_shapes(logp, old_logp, mask)
    adv = token_advantages(advantages, logp)  # (N, T)
    valid = mask.bool()  # (N, T)
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))  # (N, T)
    seq_log_ratio = log_ratio.sum(-1) / valid.sum(-1).clamp(min=1)  # (N,): log s_i
    log_s = (logp - logp.detach() + seq_log_ratio.detach()[:, None]).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    s = torch.exp(log_s)  # (N, T): s_i in value
    loss = torch.maximum(-adv * s, -adv * s.clamp(1 - eps_low, 1 + eps_high))  # (N, T)
    if _dual_clip_enabled(dual_clip_c):
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip_c), loss)
    with torch.no_grad():
        clipped = ((adv > 0) & (s > 1 + eps_high)) | ((adv < 0) & (s < 1 - eps_low))  # (N, T)
    metrics = {
        "actor/clipfrac": _metric_mean(clipped.float(), valid),
        "actor/seq_ratio_mean": _metric_mean(s, valid),
        "actor/ppo_kl": _metric_mean(old_logp - logp, valid),
    }
    return loss, metrics


@_register_policy_loss("cispo")
def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 1.0,
    eps_high: float = 0.28,
    dual_clip_c: float | None = None,
    generator: torch.Generator | None = None,
) -> LossOut:
    """CISPO: ``l_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * log p_t`` (MiniMax-M1, eq. 4).

    The clip bounds the importance weight, not the update: every token keeps a gradient ``-r_hat A grad log p``.
    MiniMax-M1 sets no lower bound (a large eps_low; 1 here, ratio floor 0) and tunes eps_high only, which the paper
    does not publish; 0.28 (DAPO's clip-higher, Trinity-RFT's CISPO default) is our assumption. The dual clip does
    not apply (the weight is bounded already); ``dual_clip_c`` and ``generator`` are unused. -> (N, T), metrics
    ``actor/is_clipfrac`` (share of tokens whose weight is clipped), ``actor/ratio_mean``, ``actor/ppo_kl``.
    """
    _check_shapes(logp, old_logp, mask)
    adv = token_advantages(advantages, logp)  # (N, T)
    valid = mask.bool()
    ratio = torch.exp(_log_ratio(logp, old_logp))  # (N, T)
    weight = ratio.clamp(1 - eps_low, 1 + eps_high).detach()  # (N, T), no gradient through the IS weight
    loss = -weight * adv * logp  # (N, T)
    with torch.no_grad():
        clipped = (ratio > 1 + eps_high) | (ratio < 1 - eps_low)
    metrics = {
        "actor/is_clipfrac": _metric_mean(clipped.float(), valid),
        "actor/ratio_mean": _metric_mean(ratio, valid),
        "actor/ppo_kl": _metric_mean(old_logp - logp, valid),
    }
    return loss, metrics
