"""STEER: per-token reweighting of the policy loss by the predicted entropy change.

Paper: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective" (arXiv 2510.10150), Theorem 1 and
Section 4. Equations: ``docs/algorithms.md`` sections "Entropy change of one token" and "STEER weights".

Pieces, each pure and detached (no gradient flows through anything here):

- ``estimate_entropy_change``: Omega per token, in the paper's first-order form or the released code's form
  (registry ``OMEGA_FORMS``).
- ``omega_abs_max``: the normaliser M = max |Omega| over whatever scope the caller passes in; the caller chooses the
  scope (micro-batch, mini-batch, rollout batch) and ``update_running_max`` gives the running-maximum scope.
- ``steer_weights``: the paper's exponential map of |Omega| / M to [lambda_min, 1]; ``token_weights`` looks up the
  map by name (registry ``WEIGHT_MAPS``: ``exp``, ``linear``, ``asymmetric``).
- ``quadrant_masks``, ``quadrant_stats``: the four (sign A) x (high/low probability) quadrants, and the share of
  tokens and summed Omega in each.

Shapes: N responses, T response tokens; ``mask`` (N, T) is 1 on real tokens and 0 on padding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from steer import choices
from steer.ops import token_advantages
from steer.registry import Registry

OMEGA_FORMS: Registry = Registry("entropy-change form", choices.OMEGA_FORMS)
WEIGHT_MAPS: Registry = Registry("STEER weight map", choices.WEIGHT_MAPS)

LOG_RATIO_CLAMP = 20.0  # method.md: the log-ratio is clamped to [-20, 20] before exp
P_OLD_FLOOR = 1e-6  # the released Omega form divides by p_old: clamped to at least this (docs/algorithms.md section 5)
LOG_P_OLD_FLOOR = math.log(P_OLD_FLOOR)


def _omega_core(logp: Tensor, entropy: Tensor) -> Tensor:
    """p (1 - p) (log p + H): the entropy's sensitivity to the sampled token's logit, up to sign (N, T)."""
    p = logp.exp()
    return p * (1.0 - p) * (logp + entropy)


@OMEGA_FORMS.register("first_order")
def _omega_first_order(logp, old_logp, entropy, adv, *, eps_low, eps_high):
    """Theorem 1 without the eta/L factor: -I_clip * A * r * p(1-p)(log p + H), H under the current policy."""
    ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    # I_clip = 0 where PPO's clipped branch is active, i.e. the token's gradient is zero
    clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
    return -(~clipped).to(logp.dtype) * adv * ratio * _omega_core(logp, entropy)


@OMEGA_FORMS.register("released")
def _omega_released(logp, old_logp, entropy, adv, *, eps_low, eps_high):
    """Released code: -(A / p_old) p(1-p)(log p + H_old); no clip indicator, H taken under pi_old.

    Departs from it in one place: p_old is clamped to at least ``P_OLD_FLOOR`` (log p_old to ``log(P_OLD_FLOOR)``),
    so 1 / p_old is at most 1e6 and a token with p_old = 0 (log p_old = -inf, e.g. masked at rollout) gives a finite
    Omega instead of inf or NaN. Identical wherever p_old >= P_OLD_FLOOR.
    """
    del eps_low, eps_high  # the released code ignores clipping
    inv_p_old = (-old_logp.clamp(min=LOG_P_OLD_FLOOR)).exp()  # 1 / max(p_old, P_OLD_FLOOR)
    return -adv * inv_p_old * _omega_core(logp, entropy)


@torch.no_grad()
def estimate_entropy_change(
    logp: Tensor,
    old_logp: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    form: str = "first_order",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> Tensor:
    """Predicted entropy change Omega at every response state for a unit step (the eta/L factor left out).

    Args:
        logp: (N, T) log pi_theta(a_t | s_t) of the sampled tokens under the parameters being trained.
        old_logp: (N, T) the same under the rollout policy pi_old.
        entropy: (N, T) H(s_t). The ``first_order`` form wants H under the current policy, the ``released`` form H
            under pi_old (as the released code computes it once per rollout); pass the one matching ``form``.
        advantages: (N,) per response or (N, T) per token.
        mask: (N, T) 1 on real tokens, 0 on padding.
        form: ``first_order`` (Theorem 1: -I_clip A r p(1-p)(log p + H)) or ``released``
            (-(A / p_old) p(1-p)(log p + H_old)).
        eps_low, eps_high: PPO clip range, used by ``first_order`` for I_clip.

    Returns:
        (N, T) Omega, positive where the update raises the entropy, exactly 0 where ``mask`` is 0. Detached.
    """
    adv = token_advantages(advantages, logp).to(logp.dtype)
    omega = OMEGA_FORMS.get(form)(logp, old_logp, entropy, adv, eps_low=eps_low, eps_high=eps_high)
    return torch.where(mask.bool(), omega, torch.zeros_like(omega))  # where(), not *, so inf/nan on pads vanish


@torch.no_grad()
def omega_abs_max(omega: Tensor, mask: Tensor) -> Tensor:
    """M = max |Omega| over the valid tokens given (a 0-dim tensor; 0 when no token is valid)."""
    if omega.numel() == 0:
        return omega.new_zeros(())
    return torch.where(mask.bool(), omega.abs(), torch.zeros_like(omega)).max()


def update_running_max(previous: Tensor | float | None, current: Tensor, *, decay: float = 1.0) -> Tensor:
    """Running-maximum normaliser: max(current, decay * previous). decay = 1 keeps the all-time maximum."""
    if previous is None:
        return current
    return torch.maximum(current, decay * torch.as_tensor(previous, dtype=current.dtype))


def _normaliser(omega: Tensor, mask: Tensor, max_abs: Tensor | float | None, floor: float) -> Tensor:
    m = omega_abs_max(omega, mask) if max_abs is None else torch.as_tensor(max_abs, dtype=omega.dtype)
    m = m.to(omega.device)
    return torch.clamp(m, min=floor)


@WEIGHT_MAPS.register("exp")
@torch.no_grad()
def steer_weights(
    omega: Tensor,
    mask: Tensor,
    *,
    lambda_min: float,
    floor: float = 0.0,
    max_abs: Tensor | float | None = None,
) -> Tensor:
    """STEER's weights w = clamp(exp(ln(lambda_min) |Omega| / M), lambda_min, 1), detached.

    Args:
        omega: (N, T) predicted entropy change (``estimate_entropy_change``).
        mask: (N, T) 1 on real tokens.
        lambda_min: weight of the token with the largest |Omega|, in (0, 1]; 1 turns STEER off (w = 1 everywhere).
        floor: lower bound on M (the released code uses 0.02), so a batch of tiny |Omega| is not stretched to
            the full range.
        max_abs: M computed by the caller over a wider scope (mini-batch, rollout, running max); by default M is
            the maximum over the tokens passed in, which is the released code's micro-batch scope.

    Returns:
        (N, T) weights, lambda_min <= w <= 1 on valid tokens, exactly lambda_min at the largest |Omega| when
        M > floor, and 1 on padding and wherever M is 0.
    """
    if not 0.0 < lambda_min <= 1.0:
        raise ValueError(f"lambda_min must be in (0, 1], got {lambda_min}")
    m = _normaliser(omega, mask, max_abs, floor)
    # tensor ops only (no .item(), no Python branch on M): no device sync in the training loop
    scaled = omega.abs() / m.clamp(min=torch.finfo(omega.dtype).tiny)  # (N, T); 0 everywhere when M = 0
    w = torch.exp(math.log(lambda_min) * scaled).clamp(lambda_min, 1.0)  # (N, T)
    at_max = (omega.abs() >= m) & (m > 0)
    w = torch.where(at_max, torch.full_like(w, lambda_min), w)  # exact at the maximum, despite rounding
    return torch.where(mask.bool(), w, torch.ones_like(w))


@WEIGHT_MAPS.register("linear")
@torch.no_grad()
def steer_weights_linear(
    omega: Tensor,
    mask: Tensor,
    *,
    low: float = 0.8,
    high: float = 1.2,
    floor: float = 0.0,
    max_abs: Tensor | float | None = None,
) -> Tensor:
    """Released-code variant, a min-max map: s = (|Omega| - lo) / (M - lo) in [0, 1], w = high - (high - low) s,
    so the smallest |Omega| gets ``high`` and the largest ``low``.

    lo = min |Omega| over the valid tokens passed in (the call's micro-batch); M = max(floor, the normaliser's M, or
    the call's max). Unlike the exponential map it also up-weights tokens whose predicted entropy change is small
    (w > 1). Returns (N, T) weights in [low, high] on valid tokens, 1 on padding; ``high`` everywhere when M <= lo.
    """
    if not 0.0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    valid = mask.bool()
    a = omega.abs()
    m = _normaliser(omega, mask, max_abs, floor)
    lo = torch.where(valid, a, torch.full_like(a, float("inf"))).min() if a.numel() else a.new_zeros(())
    lo = torch.minimum(lo, m)  # no valid token (inf), or M below every |Omega| (a floor or a wider scope)
    span = (m - lo).clamp(min=torch.finfo(omega.dtype).tiny)
    scaled = ((a - lo) / span).clamp(0.0, 1.0)  # (N, T); 0 where M = lo
    w = high - (high - low) * scaled  # (N, T)
    return torch.where(valid, w, torch.ones_like(w))


@WEIGHT_MAPS.register("asymmetric")
@torch.no_grad()
def steer_weights_asymmetric(
    omega: Tensor,
    mask: Tensor,
    *,
    lambda_min: float,
    lambda_min_pos: float = 1.0,
    floor: float = 0.0,
    max_abs: Tensor | float | None = None,
) -> Tensor:
    """Signed variant: tokens predicted to lower the entropy (Omega < 0) are damped towards ``lambda_min``, tokens
    predicted to raise it towards ``lambda_min_pos`` (default 1: left alone), each by the exponential map with the
    common normaliser M. Our reading of the released code's asymmetric mode; see docs/algorithms.md.

    Returns (N, T) weights, 1 on padding.
    """
    w_neg = steer_weights(omega, mask, lambda_min=lambda_min, floor=floor, max_abs=max_abs)
    w_pos = steer_weights(omega, mask, lambda_min=lambda_min_pos, floor=floor, max_abs=max_abs)
    return torch.where(omega < 0, w_neg, w_pos)


def token_weights(name: str, omega: Tensor, mask: Tensor, **params) -> Tensor:
    """Look up a weight map by name (``exp``, ``linear``, ``asymmetric``) and apply it: (N, T) -> (N, T)."""
    return WEIGHT_MAPS.get(name)(omega, mask, **params)


QUADRANTS = ("pos_high", "pos_low", "neg_high", "neg_low")


@torch.no_grad()
def quadrant_masks(logp: Tensor, entropy: Tensor, advantages: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The four quadrants of method.md as (N, T) bool masks over valid tokens, keyed ``pos_high``, ``pos_low``,
    ``neg_high``, ``neg_low``. "high" means log p > -H; tokens with A = 0 are in none.

    Args: logp, entropy, mask: (N, T); advantages (N,) or (N, T).
    """
    adv = token_advantages(advantages, logp)
    valid = mask.bool()
    high = logp > -entropy
    return {
        "pos_high": (adv > 0) & high & valid,
        "pos_low": (adv > 0) & ~high & valid,
        "neg_high": (adv < 0) & high & valid,
        "neg_low": (adv < 0) & ~high & valid,
    }


@torch.no_grad()
def quadrant_stats(omega: Tensor, logp: Tensor, entropy: Tensor, advantages: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Four-quadrant statistics of the predicted entropy change (method.md, "Quadrants").

    A token is "high" probability when log p > -H (then an A > 0 update lowers the entropy). Tokens with A = 0
    belong to no quadrant; their share is ``steer/quadrant/adv_zero_share``.

    Args: omega, logp, entropy, mask: (N, T); advantages (N,) or (N, T).
    Returns: ``steer/quadrant/{q}/share`` (fraction of valid tokens) and ``steer/quadrant/{q}/omega_sum`` for
    q in pos_high, pos_low, neg_high, neg_low; 0-dim tensors.
    """
    adv = token_advantages(advantages, logp)
    valid = mask.bool()
    n_valid = valid.sum().clamp(min=1)
    out: dict[str, Tensor] = {}
    for q, m in quadrant_masks(logp, entropy, adv, mask).items():
        out[f"steer/quadrant/{q}/share"] = m.sum() / n_valid
        out[f"steer/quadrant/{q}/omega_sum"] = torch.where(m, omega, torch.zeros_like(omega)).sum()
    out["steer/quadrant/adv_zero_share"] = ((adv == 0) & valid).sum() / n_valid
    return out


@torch.no_grad()
def weight_stats(omega: Tensor, weights: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Summary metrics of Omega and the weights over valid tokens (names documented in docs/algorithms.md).
    Masked reductions only, so no device sync; with no valid token the means are 0."""
    valid = mask.bool()
    n = valid.sum().clamp(min=1)
    zero = torch.zeros_like(omega)
    o_abs = torch.where(valid, omega.abs(), zero)
    w_valid = torch.where(valid, weights, zero)
    w_mean = w_valid.sum() / n
    return {
        "steer/omega_abs_max": o_abs.max(),
        "steer/omega_abs_mean": o_abs.sum() / n,
        "steer/omega_mean": torch.where(valid, omega, zero).sum() / n,
        "steer/omega_pos_frac": ((omega > 0) & valid).sum() / n,
        "steer/weight_mean": w_mean,
        "steer/weight_min": torch.where(valid, weights, torch.full_like(weights, float("inf"))).min(),
        "steer/weight_std": (torch.where(valid, (weights - w_mean) ** 2, zero).sum() / n).sqrt(),
    }
