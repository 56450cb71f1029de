"""Per-token policy losses (N, T), the KL penalty and the entropy bonus.

Shapes: N sequences, T padded response tokens. ``logp`` / ``old_logp`` (N, T) are log pi_theta(a_t|s_t) and
log pi_old(a_t|s_t); ``mask`` (N, T) is 1 on valid tokens; ``advantages`` is (N,) (one per response, broadcast to
its tokens) or (N, T). Every policy loss returns ``(loss_mat (N, T), metrics)``; the scalar comes from
``steer.aggregation.aggregate(loss_mat * weights, mask, mode, num_tokens=...)``. Values at padded positions of
``loss_mat`` are not meaningful; ``aggregate`` drops them. Metrics are detached 0-dim tensors, masked means over THIS
call's valid tokens (a micro-batch's, when the caller accumulates).

Policy losses (registry ``POLICY_LOSSES``). Each is called as
``fn(logp, old_logp, advantages, mask, *, eps_low=0.2, eps_high=0.28, dual_clip_c=10.0, generator=None, **specific)``
where ``specific`` are that loss's own keywords; an unknown keyword raises ``TypeError`` naming the accepted ones.

- ``ppo_clip`` (Schulman et al. 2017, arXiv 1707.06347; clip-higher from DAPO, arXiv 2503.14476; dual clip from
  Ye et al. 2020, arXiv 1912.09729).
- ``clip_cov`` and ``kl_cov`` (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

The ratio is ``exp(clamp(logp - old_logp, -20, 20))`` everywhere.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch

from steer import choices
from steer.ops import masked_mean, token_advantages
from steer.registry import Registry

__all__ = [
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "clip_cov_loss",
    "clip_indicator",
    "entropy_bonus",
    "kl_cov_loss",
    "kl_penalty",
    "ppo_clip_loss",
    "reinforce_loss",
]

LossOut = tuple[torch.Tensor, dict[str, torch.Tensor]]
POLICY_LOSSES: Registry[Callable[..., LossOut]] = Registry("policy loss")
KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry(
    "kl estimator", choices.KL_ESTIMATORS
)

LOG_RATIO_CLAMP = 20.0
_COMMON_KEYWORDS = ("eps_low", "eps_high", "dual_clip_c", "generator")


def _register_policy_loss(name: str):
    """Register a policy loss whose keyword-only parameters are its whole configuration.

    The registered wrapper rejects unknown keywords with a ``TypeError`` that lists the accepted ones, so a setting
    meant for another loss (e.g. ``clip_ratio`` passed to ``ppo_clip``) fails loudly instead of being ignored.
    """

    def deco(fn: Callable[..., LossOut]) -> Callable[..., LossOut]:
        params = inspect.signature(fn).parameters.values()
        accepted = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        missing = [k for k in _COMMON_KEYWORDS if k not in accepted]
        if missing:
            raise TypeError(f"policy loss {name!r} must accept the common keywords {missing}")

        @functools.wraps(fn)
        def checked(logp, old_logp, advantages, mask, **kwargs) -> LossOut:
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise TypeError(
                    f"policy loss {name!r} got unexpected keyword argument(s) {unknown}; it accepts {accepted}"
                )
            return fn(logp, old_logp, advantages, mask, **kwargs)

        return POLICY_LOSSES.register(name)(checked)

    return deco


# ----------------------------------------------------------------------------------------------------------- helpers
def _check_shapes(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> None:
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            "`logp`, `old_logp` and `mask` must all be (N, T); got "
            f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )


def _log_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """``clamp(logp - old_logp, -20, 20)`` (N, T)."""
    return (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _metric_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Detached float32 mean of ``x`` over ``valid`` (bool (N, T)), a metric; 0 when nothing is valid. -> ()."""
    return masked_mean(x.detach().to(torch.float32), valid)


def _token_cov(advantages: torch.Tensor, logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cui et al.'s per-token covariance ``(A_t - mean A)(logp_t - mean logp)``, means over valid tokens (N, T).

    Detached; padded positions hold ``-inf`` so that they are never selected.
    """
    a, lp = advantages.detach(), logp.detach()  # (N, T)
    n = valid.sum().clamp(min=1)
    a_mean = torch.where(valid, a, torch.zeros_like(a)).sum() / n
    lp_mean = torch.where(valid, lp, torch.zeros_like(lp)).sum() / n
    cov = (a - a_mean) * (lp - lp_mean)  # (N, T)
    return torch.where(valid, cov, torch.full_like(cov, -math.inf))


def _num_selected(ratio: float, n_valid: int) -> int:
    """``max(1, floor(ratio * n_valid))``, and 0 when there is no valid token."""
    return 0 if n_valid == 0 else min(n_valid, max(1, math.floor(ratio * n_valid)))


def _dual_clip_enabled(dual_clip_c: float | None) -> bool:
    if dual_clip_c is None or math.isinf(dual_clip_c):
        return False
    if dual_clip_c <= 1.0:
        raise ValueError(f"`dual_clip_c` must be > 1 (or None/inf to disable), got {dual_clip_c}")
    return True


# ----------------------------------------------------------------------------------------------------------- PPO clip
def clip_indicator(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """``I_clip`` of method.md: 0 where the PPO clip removes the gradient, else 1. (N, T) float, no gradient.

    0 where (A > 0 and r > 1 + eps_high) or (A < 0 and r < 1 - eps_low). ``advantages`` (N,) or (N, T).
    The dual clip (A < 0 and r > c) is not part of ``I_clip``.
    """
    adv = token_advantages(advantages, ratio)  # (N, T)
    clipped = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))  # (N, T)
    return (~clipped).to(ratio.dtype).detach()


def _ppo_clip_terms(
    logp, old_logp, advantages, mask, eps_low, eps_high, dual_clip_c
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Shared by ``ppo_clip`` and ``clip_cov``: the dual-clip PPO loss (N, T) and its metrics."""
    _check_shapes(logp, old_logp, mask)
    adv = token_advantages(advantages, logp)  # (N, T)
    valid = mask.bool()  # (N, T)
    log_ratio = _log_ratio(logp, old_logp)  # (N, T)
    ratio = torch.exp(log_ratio)  # (N, T)
    unclipped = -adv * ratio  # (N, T)
    clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)  # (N, T)
    loss = torch.maximum(unclipped, clipped)  # (N, T)
    dual = torch.zeros_like(valid)  # (N, T) bool
    if _dual_clip_enabled(dual_clip_c):
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip_c), loss)  # (N, T)
        dual = ((adv < 0) & (ratio > dual_clip_c)).detach()  # there min() picks -A c: r > c implies -A r > -A c
    with torch.no_grad():
        lower = (adv < 0) & (ratio < 1 - eps_low)
        higher = (adv > 0) & (ratio > 1 + eps_high)
    metrics = {
        "actor/clipfrac": _metric_mean((lower | higher).float(), valid),
        "actor/clipfrac_lower": _metric_mean(lower.float(), valid),
        "actor/clipfrac_higher": _metric_mean(higher.float(), valid),
        "actor/dual_clipfrac": _metric_mean(dual.float(), valid),
        "actor/ppo_kl": _metric_mean(old_logp - logp, valid),
        "actor/ratio_mean": _metric_mean(ratio, valid),
    }
    return loss, metrics


@_register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float | None = 10.0,
    generator: torch.Generator | None = None,
) -> LossOut:
    """Dual-clip PPO surrogate with asymmetric clip range (GRPO/DAPO's per-token loss). -> (N, T), metrics.

    ``l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``; for A < 0, ``l = min(l, -A c)`` with
    ``c = dual_clip_c`` (``None`` or ``inf`` disables; must be > 1). ``generator`` is unused (common signature).

    Metrics: ``actor/clipfrac`` (clipped branch active, i.e. ``clip_indicator == 0``), ``actor/clipfrac_lower``
    (A < 0, r < 1 - eps_low), ``actor/clipfrac_higher`` (A > 0, r > 1 + eps_high), ``actor/dual_clipfrac``
    (A < 0, r > c), ``actor/ppo_kl`` (mean of old_logp - logp), ``actor/ratio_mean``.
    """
    return _ppo_clip_terms(logp, old_logp, advantages, mask, eps_low, eps_high, dual_clip_c)


# ----------------------------------------------------------------------------------------------------------- Cui et al.
@_register_policy_loss("clip_cov")
def clip_cov_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float | None = 10.0,
    generator: torch.Generator | None = None,
    clip_ratio: float = 2e-4,
    cov_lb: float = 1.0,
    cov_ub: float = 5.0,
) -> LossOut:
    """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): detach a few high-covariance tokens. -> (N, T), metrics.

    ``cov_t = (A_t - mean A)(logp_t - mean logp)`` with means over this call's valid tokens. Among valid tokens
    that the PPO clip has not already clipped (``clip_indicator == 1``) and with ``cov_lb < cov_t < cov_ub``,
    ``max(1, floor(clip_ratio * n_valid))`` tokens (fewer if fewer qualify) are drawn uniformly at random with
    ``generator`` and their loss is detached (same value, zero gradient); all other tokens get the ``ppo_clip`` loss.

    Departures: verl and the authors' code multiply the chosen tokens' loss by 0 (same gradient, but the logged loss
    changes) and apply no dual clip (pass ``dual_clip_c=None`` to match); ``n_valid`` and the means are per call,
    i.e. per micro-batch under accumulation, as in verl. Metric: ``actor/clipcov_frac`` (detached / valid tokens),
    plus the ``ppo_clip`` metrics.
    """
    if clip_ratio <= 0:
        raise ValueError(f"`clip_ratio` must be > 0, got {clip_ratio}")
    loss, metrics = _ppo_clip_terms(logp, old_logp, advantages, mask, eps_low, eps_high, dual_clip_c)
    valid = mask.bool()  # (N, T)
    adv = token_advantages(advantages, logp)  # (N, T)
    with torch.no_grad():
        ratio = torch.exp(_log_ratio(logp, old_logp))  # (N, T)
        not_clipped = clip_indicator(ratio, adv, eps_low, eps_high).bool()  # (N, T)
        cov = _token_cov(adv, logp, valid)  # (N, T)
        candidates = (valid & not_clipped & (cov > cov_lb) & (cov < cov_ub)).flatten().nonzero().squeeze(-1)  # (M,)
        k = min(_num_selected(clip_ratio, int(valid.sum())), candidates.numel())
        device = generator.device if generator is not None else candidates.device
        perm = torch.randperm(candidates.numel(), generator=generator, device=device).to(candidates.device)  # (M,)
        chosen = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)  # (N*T,)
        chosen[candidates[perm[:k]]] = True
        chosen = chosen.view_as(valid)  # (N, T)
    loss = torch.where(chosen, loss.detach(), loss)  # (N, T)
    metrics["actor/clipcov_frac"] = _metric_mean(chosen.float(), valid)
    return loss, metrics


@_register_policy_loss("kl_cov")
def kl_cov_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float | None = 10.0,
    generator: torch.Generator | None = None,
    kl_cov_ratio: float = 0.002,
    kl_coef: float = 1.0,
) -> LossOut:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): a |log-ratio| penalty on the top-covariance tokens. -> (N, T).

    ``k = max(1, floor(kl_cov_ratio * n_valid))`` valid tokens with the largest ``cov_t`` (as in ``clip_cov``) get
    ``-A r + kl_coef * |logp - old_logp|``; the others ``-A r``. No ratio clipping: ``eps_low``, ``eps_high``,
    ``dual_clip_c`` and ``generator`` are accepted for the common signature and unused (ties in ``cov`` are broken
    by ``torch.topk``). The penalty uses the unclamped log-ratio. Inert when training is exactly on-policy (r = 1,
    log-ratio 0). Metrics: ``actor/klcov_frac``, ``actor/ppo_kl``, ``actor/ratio_mean``.
    """
    if kl_cov_ratio <= 0:
        raise ValueError(f"`kl_cov_ratio` must be > 0, got {kl_cov_ratio}")
    _check_shapes(logp, old_logp, mask)
    adv = token_advantages(advantages, logp)  # (N, T)
    valid = mask.bool()  # (N, T)
    ratio = torch.exp(_log_ratio(logp, old_logp))  # (N, T)
    loss = -adv * ratio  # (N, T)
    with torch.no_grad():
        cov = _token_cov(adv, logp, valid).flatten()  # (N*T,)
        k = _num_selected(kl_cov_ratio, int(valid.sum()))
        chosen = torch.zeros_like(cov, dtype=torch.bool)  # (N*T,)
        chosen[torch.topk(cov, k).indices] = True
        chosen = chosen.view_as(valid)  # (N, T)
    loss = torch.where(chosen, loss + kl_coef * (logp - old_logp).abs(), loss)  # (N, T)
    metrics = {
        "actor/klcov_frac": _metric_mean(chosen.float(), valid),
        "actor/ppo_kl": _metric_mean(old_logp - logp, valid),
        "actor/ratio_mean": _metric_mean(ratio, valid),
    }
    return loss, metrics


@_register_policy_loss("reinforce")
def reinforce_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float | None = 10.0,
    generator: torch.Generator | None = None,
) -> LossOut:
    """Unclipped importance-weighted policy gradient ``-A r`` (N, T); at r = 1 its gradient is REINFORCE's
    ``-A grad log p``. Used by W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347), which trains on-policy.
    Clip settings and ``generator`` are accepted for the common signature and unused. Metrics: ``actor/ppo_kl``,
    ``actor/ratio_mean``.
    """
    _check_shapes(logp, old_logp, mask)
    adv = token_advantages(advantages, logp)  # (N, T)
    valid = mask.bool()
    ratio = torch.exp(_log_ratio(logp, old_logp))  # (N, T)
    metrics = {"actor/ppo_kl": _metric_mean(old_logp - logp, valid), "actor/ratio_mean": _metric_mean(ratio, valid)}
    return -adv * ratio, metrics


# ----------------------------------------------------------------------------------------------------------- extras
def entropy_bonus(entropy: torch.Tensor, coef: float) -> torch.Tensor:
    """Entropy-bonus loss term ``-coef * H`` (N, T), added to ``loss_mat`` before aggregation.

    With ``token-mean`` aggregation this is the baseline "loss - beta * token-mean(H)" of method.md.
    """
    return -coef * entropy


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``logp - ref_logp`` (N, T): unbiased for KL(pi || ref) under samples of pi, high variance, can be < 0."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``0.5 * (logp - ref_logp)^2`` (N, T): biased, low variance, >= 0."""
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``exp(ref - logp) - (ref - logp) - 1`` (N, T): Schulman's unbiased, >= 0 estimator ("Approximating KL
    divergence", 2020). The log-ratio is clamped to [-20, 20] before exp; departure from verl: no clamp of the
    result to [-10, 10].
    """
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (N, T)
    return torch.exp(log_ratio) - log_ratio - 1


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimate (N, T) by name in ``KL_ESTIMATORS`` (``k1``, ``k2``, ``k3``).

    Add ``kl_coef * kl_penalty(...)`` to ``loss_mat`` before aggregation (GRPO's KL term, Shao et al. 2024).
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"`logp` and `ref_logp` must have the same shape, got {logp.shape} and {ref_logp.shape}")
    return KL_ESTIMATORS.get(kind)(logp, ref_logp)


# GSPO and CISPO live in their own module; importing it here registers them whenever POLICY_LOSSES is imported.
from steer import losses_gspo_cispo  # noqa: E402, F401
