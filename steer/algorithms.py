"""Algorithms as named settings over the core pieces, and the per-micro-batch objective they define.

An algorithm is one ``AlgorithmConfig``: which advantage estimator, which per-token policy loss, which token
weighting (none, STEER, fork tokens), which advantage shaping, and the optional entropy and KL terms. The presets in
``ALGORITHMS`` are the paper's arms (method.md, "Baselines"); ``get_algorithm("steer", lambda_min=0.8)`` overrides
single fields. ``policy_objective`` is the only place where the pieces meet:

    loss = aggregate(loss_mat * weights, mask, mode, counts) - entropy_coef * aggregate(H) + kl_coef * aggregate(kl)

The per-token loss, the weights and the aggregation stay separate (style.md, principle 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from steer.advantages import ADVANTAGE_ESTIMATORS
from steer.aggregation import AGGREGATIONS, aggregate
from steer.interventions import ADVANTAGE_SHAPINGS, fork_token_weights
from steer.losses import KL_ESTIMATORS, POLICY_LOSSES, entropy_bonus, kl_penalty
from steer.registry import Registry
from steer.reweighting import (
    OMEGA_FORMS,
    WEIGHT_MAPS,
    estimate_entropy_change,
    quadrant_stats,
    token_weights,
    weight_stats,
)

SteerScope = Literal["micro", "mini", "rollout", "running"]


class AlgorithmConfig(BaseModel):
    """One RL algorithm: every knob of the objective. Field help texts appear in the CLI and the Prefect UI."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("steer", description="Preset this config started from (see ALGORITHMS); informational.")
    advantage_estimator: str = Field(
        "grpo", description="Outcome advantage: grpo (group z-score), drgrpo, rloo, opo, w_reinforce."
    )
    policy_loss: str = Field(
        "ppo_clip", description="Per-token loss: ppo_clip, clip_cov (Cui et al. 2025), kl_cov, reinforce."
    )
    eps_low: float = Field(0.2, ge=0, description="PPO lower clip: ratio floor 1 - eps_low (paper: 0.2).")
    eps_high: float = Field(
        0.28, ge=0, description="PPO upper clip 1 + eps_high. 0.28 is DAPO's clip-higher, which the paper uses."
    )
    dual_clip_c: float | None = Field(
        10.0, description="Dual-clip bound for A < 0 (Ye et al. 2020; paper: 10). None disables it."
    )
    loss_agg_mode: str = Field(
        "token-mean",
        description="token-mean (DAPO, the paper), seq-mean-token-mean (original GRPO; favours short answers), "
        "seq-mean-token-sum, seq-mean-token-sum-norm (Dr.GRPO).",
    )
    clip_cov_ratio: float = Field(2e-4, gt=0, le=1, description="Clip-Cov: fraction of tokens whose loss is cut.")
    clip_cov_lb: float = Field(1.0, description="Clip-Cov: lower covariance bound of the candidate tokens.")
    clip_cov_ub: float = Field(5.0, description="Clip-Cov: upper covariance bound of the candidate tokens.")
    kl_cov_ratio: float = Field(2e-3, gt=0, le=1, description="KL-Cov: fraction of tokens (top by cov) penalised.")
    kl_cov_coef: float = Field(1.0, ge=0, description="KL-Cov: coefficient of |log p - log p_old| on those tokens.")
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus beta (loss - beta * H). 1e-4..1e-3 barely acts; 0.01 explodes."
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the reference policy; 0 (the paper) skips it.")
    kl_estimator: str = Field("k3", description="KL estimator: k1, k2, k3 (Schulman's, non-negative).")
    token_weighting: str = Field("none", description="Token weights: none, steer, fork_tokens.")
    steer_lambda_min: float = Field(
        0.7, gt=0, le=1, description="STEER: weight at the largest |Omega|. Paper 0.7, released script 0.8; 1 = off."
    )
    steer_form: str = Field(
        "first_order",
        description="Omega form: first_order (Theorem 1, with I_clip and H under the current policy) or released "
        "(-(A/p_old) p(1-p)(log p + H_old), heavy-tailed through 1/p_old).",
    )
    steer_map: str = Field("exp", description="Weight map: exp (the paper), linear ([0.8, 1.2]), asymmetric.")
    steer_scope: SteerScope = Field(
        "micro",
        description="Scope of the normaliser M = max|Omega|: micro (the paper and released code, for which "
        "lambda_min was tuned; makes the micro-batch size a hyperparameter), mini (one optimizer step; costs one "
        "no-grad forward), rollout (Omega at the rollout policy, r = 1), running (running maximum over "
        "micro-batches).",
    )
    steer_floor: float = Field(0.0, ge=0, description="Lower bound on M; the released code uses 0.02.")
    steer_running_decay: float = Field(
        0.99, gt=0, le=1, description="Running scope: M <- max(M_micro, decay * M); 1 keeps the all-time max."
    )
    fork_top_rho: float = Field(0.2, gt=0, le=1, description="Fork tokens: share of highest-entropy tokens kept.")
    advantage_shaping: str = Field("none", description="none or entropy_aware (Cheng et al. 2025).")
    eaa_alpha: float = Field(0.4, ge=0, description="Entropy-aware advantage: bonus scale alpha.")
    eaa_kappa: float = Field(2.0, gt=1, description="Entropy-aware advantage: bonus capped at |A| / kappa.")

    @model_validator(mode="after")
    def _check_names(self) -> AlgorithmConfig:
        checks = {
            "advantage_estimator": ADVANTAGE_ESTIMATORS,
            "policy_loss": POLICY_LOSSES,
            "loss_agg_mode": AGGREGATIONS,
            "kl_estimator": KL_ESTIMATORS,
            "token_weighting": TOKEN_WEIGHT_SOURCES,
            "steer_form": OMEGA_FORMS,
            "steer_map": WEIGHT_MAPS,
        }
        for field, registry in checks.items():
            value = getattr(self, field)
            if value not in registry:
                raise ValueError(f"{field}={value!r} is not one of: {', '.join(registry.names())}")
        if self.advantage_shaping != "none" and self.advantage_shaping not in ADVANTAGE_SHAPINGS:
            raise ValueError(f"advantage_shaping={self.advantage_shaping!r} is not one of: none, entropy_aware")
        if self.eps_low >= 1:
            raise ValueError(f"eps_low={self.eps_low} must be < 1 (the ratio floor 1 - eps_low must stay positive)")
        return self


# ----------------------------------------------------------------------------------------------------- presets
ALGORITHMS: Registry = Registry("algorithm")
_PRESETS: dict[str, dict] = {
    # GRPO with the classic symmetric clip.
    "grpo": dict(eps_high=0.2),
    # DAPO's clip-higher: eps_high = 0.28 lets low-probability tokens grow.
    "clip_higher": dict(),
    # Clip-higher plus an entropy bonus (the paper's "entropy regularization" arm).
    "entropy_bonus": dict(entropy_coef=1e-3),
    "clip_cov": dict(policy_loss="clip_cov"),
    "kl_cov": dict(policy_loss="kl_cov"),
    # STEER as in the paper's main setting: clip-higher, token-mean, lambda_min = 0.7.
    "steer": dict(token_weighting="steer"),
    "fork_tokens": dict(token_weighting="fork_tokens"),
    "entropy_aware_adv": dict(advantage_shaping="entropy_aware"),
    # REINFORCE on raw +1/-1 rewards with positive samples down-weighted (lambda = 0.1).
    "w_reinforce": dict(advantage_estimator="w_reinforce", policy_loss="reinforce"),
}


for _name, _overrides in _PRESETS.items():
    ALGORITHMS.register(_name)(_overrides)


def get_algorithm(name: str, **overrides) -> AlgorithmConfig:
    """The preset ``name`` with ``overrides`` applied; a bad field or value raises with the fix in the message."""
    return AlgorithmConfig(**{"name": name, **ALGORITHMS.get(name), **overrides})


# ------------------------------------------------------------------------------------------- token weight sources
@dataclass
class TokenContext:
    """Tensors of one micro-batch that token weightings may read. All (N, T) except ``advantages``."""

    logp: Tensor  # detached current log-probs
    old_logp: Tensor
    entropy: Tensor  # detached current entropy
    old_entropy: Tensor
    advantages: Tensor  # (N,) or (N, T)
    mask: Tensor
    omega: Tensor  # predicted entropy change for the configured form
    steer_max_abs: Tensor | None  # normaliser M from a wider scope, or None for this micro-batch's max


TOKEN_WEIGHT_SOURCES: Registry = Registry("token weighting")


@TOKEN_WEIGHT_SOURCES.register("none")
def _no_weights(ctx: TokenContext, cfg: AlgorithmConfig) -> Tensor:
    return torch.ones_like(ctx.mask)


@TOKEN_WEIGHT_SOURCES.register("steer")
def _steer_weights(ctx: TokenContext, cfg: AlgorithmConfig) -> Tensor:
    params = {} if cfg.steer_map == "linear" else dict(lambda_min=cfg.steer_lambda_min)
    return token_weights(cfg.steer_map, ctx.omega, ctx.mask, floor=cfg.steer_floor, max_abs=ctx.steer_max_abs, **params)


@TOKEN_WEIGHT_SOURCES.register("fork_tokens")
def _fork_weights(ctx: TokenContext, cfg: AlgorithmConfig) -> Tensor:
    return fork_token_weights(ctx.entropy, ctx.mask, top_rho=cfg.fork_top_rho)


# ------------------------------------------------------------------------------------------------- the objective
def omega_for(cfg: AlgorithmConfig, logp, old_logp, entropy, old_entropy, advantages, mask) -> Tensor:
    """Omega (N, T) in the configured form: first_order reads the current H, released the rollout-time H_old."""
    h = entropy if cfg.steer_form == "first_order" else old_entropy
    return estimate_entropy_change(
        logp.detach(), old_logp, h.detach(), advantages, mask, form=cfg.steer_form, eps_low=cfg.eps_low,
        eps_high=cfg.eps_high,
    )  # fmt: skip


def policy_loss_kwargs(cfg: AlgorithmConfig) -> dict:
    """The keyword arguments of the configured per-token loss (each loss rejects keywords it does not know)."""
    common = dict(eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip_c=cfg.dual_clip_c)
    extra = {
        "clip_cov": dict(clip_ratio=cfg.clip_cov_ratio, cov_lb=cfg.clip_cov_lb, cov_ub=cfg.clip_cov_ub),
        "kl_cov": dict(kl_cov_ratio=cfg.kl_cov_ratio, kl_coef=cfg.kl_cov_coef),
    }
    return {**common, **extra.get(cfg.policy_loss, {})}


def policy_objective(
    cfg: AlgorithmConfig,
    *,
    logp: Tensor,
    old_logp: Tensor,
    entropy: Tensor,
    old_entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    num_tokens: float | Tensor,
    num_seqs: int,
    max_len: int,
    steer_max_abs: Tensor | None = None,
    ref_logp: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The loss of one micro-batch, scaled so that summing it over the micro-batches of a mini-batch gives the
    mini-batch loss (the global counts ``num_tokens``, ``num_seqs``, ``max_len`` belong to the mini-batch).

    Args:
        logp, entropy: (N, T) under the parameters being trained, with gradient.
        old_logp, old_entropy: (N, T) under the rollout policy, detached.
        advantages: (N,) per response. mask: (N, T).
        steer_max_abs: STEER's normaliser from a wider scope (None: this micro-batch's maximum).
        ref_logp: (N, T) reference log-probs, needed when ``cfg.kl_coef > 0``.
    Returns:
        loss (scalar), metrics (0-dim tensors, micro-batch means), per-token tensors (N, T): omega, weights,
        advantages (after shaping) for persistence.
    """
    adv = advantages
    if cfg.advantage_shaping != "none":
        adv = ADVANTAGE_SHAPINGS.get(cfg.advantage_shaping)(
            advantages, entropy.detach(), mask, alpha=cfg.eaa_alpha, kappa=cfg.eaa_kappa
        )  # (N, T)
    loss_mat, metrics = POLICY_LOSSES.get(cfg.policy_loss)(
        logp, old_logp, adv, mask, generator=generator, **policy_loss_kwargs(cfg)
    )  # (N, T)
    omega = omega_for(cfg, logp, old_logp, entropy, old_entropy, adv, mask)  # (N, T), a diagnostic for every arm
    ctx = TokenContext(logp.detach(), old_logp, entropy.detach(), old_entropy, adv, mask, omega, steer_max_abs)
    weights = TOKEN_WEIGHT_SOURCES.get(cfg.token_weighting)(ctx, cfg)  # (N, T), detached
    counts = dict(num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    pg_loss = aggregate(loss_mat * weights, mask, cfg.loss_agg_mode, **counts)
    loss = pg_loss
    if cfg.entropy_coef > 0:
        loss = loss + aggregate(entropy_bonus(entropy, cfg.entropy_coef), mask, cfg.loss_agg_mode, **counts)
    if cfg.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp: set kl_coef=0 or keep a reference model")
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)  # (N, T)
        loss = loss + cfg.kl_coef * aggregate(kl, mask, cfg.loss_agg_mode, **counts)
    metrics = {**metrics, "actor/pg_loss": pg_loss.detach()}
    metrics.update(weight_stats(omega, weights, mask))
    metrics.update(quadrant_stats(omega, logp.detach(), entropy.detach(), adv, mask))
    return loss, metrics, {"omega": omega, "weights": weights, "advantages": adv}
