"""Algorithms as named settings over the core pieces: the typed, sectioned ``AlgorithmConfig`` and its presets.

An algorithm is one ``AlgorithmConfig``: the advantage estimator, the PPO clip range, and one section per component,
each a pydantic discriminated union on ``name`` that carries only that component's own fields:

- ``policy_loss``: ppo_clip | clip_cov | kl_cov | reinforce (``steer.losses``);
- ``token_weighting``: none | steer | fork_tokens (``steer.reweighting``, ``steer.interventions``);
- ``advantage_shaping``: none | entropy_aware (``steer.interventions``);

plus the aggregation mode and the optional entropy and KL terms. ``steer.objective.build_objective`` turns a config
into the callable objective once; nothing below it reads the config. The presets in ``ALGORITHMS`` are the paper's
arms (method.md, "Baselines"); ``resolve_algorithm("steer", {"token_weighting": {"lambda_min": 0.8}})`` overrides
single fields of a preset (a section without ``name`` keeps the preset's component).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steer.choices import (
    AdvantageEstimatorName,
    AggregationName,
    IsLevelName,
    KlEstimatorName,
    NormaliserName,
    OmegaFormName,
    RolloutCorrectionName,
    WeightMapName,
)
from steer.registry import Registry


class _Section(BaseModel):
    """A config section: unknown fields are errors; a component section's fields are its function's keywords."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------------------------------------- clip range
class ClipRange(_Section):
    """PPO's trust region, shared by the clipped losses and by Omega's clip indicator."""

    eps_low: float = Field(
        0.2, ge=0, le=1, description="PPO lower clip: ratio floor 1 - eps_low (paper: 0.2; 1 = no floor, Clip-Cov 7B)."
    )
    eps_high: float = Field(
        0.28, ge=0, description="PPO upper clip 1 + eps_high. 0.28 is DAPO's clip-higher, which the paper uses."
    )
    dual_clip_c: float | None = Field(
        10.0, description="Dual-clip bound for A < 0 (Ye et al. 2020; paper: 10). None disables it."
    )


# ---------------------------------------------------------------------------------------- rollout correction
class RolloutCorrection(_Section):
    """Train/inference mismatch correction (``steer.rollout_correction``): the per-token loss times an importance
    weight of rho = pi_old / pi_sampler, truncated (TIS) or masked (MIS) at C. Off by default (the paper has none)."""

    mode: RolloutCorrectionName = Field(
        "none",
        description="none (no correction: the paper), truncate (TIS, w = min(rho, C); Yao et al. 2025) or mask "
        "(MIS, w = rho inside [1/C, C], else 0: the token or response is dropped; Liu et al. 2025, verl's mask).",
    )
    level: IsLevelName = Field(
        "token",
        description="token (rho_t), sequence (exp of the sum of token log-ratios: the unbiased product, "
        "high-variance on long responses) or geometric (exp of their mean: length-normalised), as verl's levels.",
    )
    threshold: float = Field(
        2.0,
        gt=1,
        description="C: TIS caps the weight at C, MIS keeps ratios in [1/C, C] (verl's default 2; inf: never acts). "
        "Sequence-level ratios grow with length: use a larger C there or the geometric level.",
    )


# ------------------------------------------------------------------------------------------------ policy loss
class PpoClipLoss(_Section):
    """PPO's clipped surrogate (Schulman et al. 2017) with clip-higher and dual clip."""

    name: Literal["ppo_clip"] = "ppo_clip"


class ClipCovLoss(_Section):
    """Clip-Cov (Cui et al. 2025): the gradient of a random few high-covariance tokens is cut."""

    name: Literal["clip_cov"] = "clip_cov"
    clip_ratio: float = Field(2e-4, gt=0, le=1, description="Fraction of tokens whose loss is cut.")
    cov_lb: float = Field(1.0, description="Lower covariance bound of the candidate tokens.")
    cov_ub: float = Field(5.0, description="Upper covariance bound of the candidate tokens.")


class KlCovLoss(_Section):
    """KL-Cov (Cui et al. 2025): a KL term on the top tokens by covariance."""

    name: Literal["kl_cov"] = "kl_cov"
    kl_cov_ratio: float = Field(2e-3, gt=0, le=1, description="Fraction of tokens (top by cov) penalised.")
    kl_coef: float = Field(1.0, ge=0, description="Coefficient of |log p - log p_old| on those tokens.")


class ReinforceLoss(_Section):
    """Unclipped REINFORCE, -A log p (paired with the W-REINFORCE advantage)."""

    name: Literal["reinforce"] = "reinforce"


class GspoLoss(_Section):
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): the length-normalised sequence ratio and its clip (clip.eps_*;
    the paper's 3e-4 / 4e-4 in the gspo preset)."""

    name: Literal["gspo"] = "gspo"


class CispoLoss(_Section):
    """CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by the clipped, detached token ratio (clip.eps_*)."""

    name: Literal["cispo"] = "cispo"


PolicyLoss = Annotated[
    PpoClipLoss | ClipCovLoss | KlCovLoss | ReinforceLoss | GspoLoss | CispoLoss, Field(discriminator="name")
]


# -------------------------------------------------------------------------------------------- token weighting
class NoWeighting(_Section):
    """Every token weighs 1 (GRPO and the other baselines)."""

    name: Literal["none"] = "none"


class SteerWeighting(_Section):
    """STEER (arXiv 2510.10150): w = exp(ln(lambda_min) |Omega| / M), Omega the predicted entropy change."""

    name: Literal["steer"] = "steer"
    lambda_min: float = Field(
        0.7, gt=0, le=1, description="Weight at the largest |Omega|. Paper 0.7, released script 0.8; 1 = off."
    )
    form: OmegaFormName = Field(
        "first_order",
        description="Omega form: first_order (Theorem 1, with I_clip and H under the current policy) or released "
        "(-(A/p_old) p(1-p)(log p + H_old), heavy-tailed through 1/p_old).",
    )
    map: WeightMapName = Field("exp", description="Weight map: exp (the paper), linear ([0.8, 1.2]), asymmetric.")
    normaliser: NormaliserName = Field(
        "group",
        description="Scope of the normaliser M (steer.normalisers): group (max |Omega| over each normaliser_group "
        "sequences: the released code's micro-batch of 8, for which lambda_min was tuned, independent of "
        "optim.micro_batch_size), group_quantile (the quantile of |Omega| over the group: robust to the tail), "
        "micro (the memory micro-batch's own max; makes micro_batch_size a hyperparameter), mini (one optimizer "
        "step; costs one no-grad forward), rollout (Omega at the rollout policy, r = 1), running (running maximum "
        "over the groups of one update).",
    )
    normaliser_group: int = Field(
        8,
        ge=1,
        description="Sequences per normaliser group (group, group_quantile, running): 8, the released code's "
        "micro-batch per GPU. Its own setting, so the memory micro-batch size does not change the weights.",
    )
    quantile: float = Field(
        0.99, gt=0, le=1, description="group_quantile normaliser: M = this quantile of |Omega| over the group."
    )
    floor: float = Field(0.0, ge=0, description="Lower bound on M; the released code uses 0.02.")
    running_decay: float = Field(
        0.99, gt=0, le=1, description="Running normaliser: M <- max(M_group, decay * M); 1 keeps the max so far."
    )


class ForkTokenWeighting(_Section):
    """Fork tokens / 80-20 (Wang et al. 2025): only the highest-entropy tokens keep their gradient."""

    name: Literal["fork_tokens"] = "fork_tokens"
    top_rho: float = Field(0.2, gt=0, le=1, description="Share of highest-entropy tokens kept.")


class StareWeighting(_Section):
    """STARE (Luo et al. 2026, arXiv 2606.19236): the highest-surprisal tokens of the A > 0 (and, C2, A < 0)
    responses reweighted, while the rollout's entropy is below a target. Defaults: the reference script's."""

    name: Literal["stare"] = "stare"
    top_ratio: float = Field(0.1, ge=0, le=1, description="Share P of each advantage-sign subset reweighted (10%).")
    reweight_w: float = Field(1.1, ge=1, description="Weight W of the high-surprisal A > 0 tokens (amplified).")
    reweight_m: float = Field(0.9, gt=0, le=1, description="Weight M of the high-surprisal A < 0 tokens (C2 only).")
    variant: Literal["O1", "C2"] = Field("O1", description="O1: amplify L+ only (the paper's default); C2: both.")
    target_entropy: float = Field(
        0.3, ge=0, description="Gate: reweight only while the rollout's entropy is below it (reference: 0.3)."
    )


TokenWeighting = Annotated[
    NoWeighting | SteerWeighting | ForkTokenWeighting | StareWeighting, Field(discriminator="name")
]


# ------------------------------------------------------------------------------------------ advantage shaping
class NoShaping(_Section):
    """The outcome advantage as it is, on every token of the response."""

    name: Literal["none"] = "none"


class EntropyAwareShaping(_Section):
    """Entropy-aware advantage (Cheng et al. 2025): A_t + min(alpha H_t, |A_t| / kappa)."""

    name: Literal["entropy_aware"] = "entropy_aware"
    alpha: float = Field(0.4, ge=0, description="Bonus scale alpha.")
    kappa: float = Field(2.0, gt=1, description="Bonus capped at |A| / kappa.")


AdvantageShaping = Annotated[NoShaping | EntropyAwareShaping, Field(discriminator="name")]


# ------------------------------------------------------------------------------------------- entropy control
class FixedEntropyCoef(_Section):
    """The entropy bonus coefficient is ``entropy_coef``, constant."""

    name: Literal["fixed"] = "fixed"


class AdaptiveEntropyControl(_Section):
    """Adaptive entropy control (Skywork-OR1, arXiv 2505.22312): the bonus coefficient steered toward a target
    entropy, applied only while the rollout's entropy is at or below it (replaces ``entropy_coef``)."""

    name: Literal["adaptive"] = "adaptive"
    target_entropy: float = Field(0.2, ge=0, description="Target rollout entropy (Skywork-OR1: 0.2).")
    delta: float = Field(0.005, gt=0, description="Step of the coefficient per rollout (Skywork-OR1: 0.005).")
    coef_init: float = Field(0.0, ge=0, description="Coefficient at the first rollout (Skywork-OR1: 0).")
    coef_max: float = Field(0.05, gt=0, description="Upper bound on the coefficient (a guard; 0.01 explodes).")


EntropyControl = Annotated[FixedEntropyCoef | AdaptiveEntropyControl, Field(discriminator="name")]

SECTIONS: dict[str, tuple[type[_Section], ...]] = {  # the first variant is the default
    "policy_loss": (PpoClipLoss, ClipCovLoss, KlCovLoss, ReinforceLoss, GspoLoss, CispoLoss),
    "token_weighting": (NoWeighting, SteerWeighting, ForkTokenWeighting, StareWeighting),
    "advantage_shaping": (NoShaping, EntropyAwareShaping),
    "entropy_control": (FixedEntropyCoef, AdaptiveEntropyControl),
}
"""The component sections of ``AlgorithmConfig``: field -> its variants (each chosen by its ``name``)."""


MOVED_FIELDS: dict[str, str] = {
    "eps_low": "clip.eps_low",
    "eps_high": "clip.eps_high",
    "dual_clip_c": "clip.dual_clip_c",
    "clip_cov_ratio": "policy_loss.clip_ratio",
    "clip_cov_lb": "policy_loss.cov_lb",
    "clip_cov_ub": "policy_loss.cov_ub",
    "kl_cov_ratio": "policy_loss.kl_cov_ratio",
    "kl_cov_coef": "policy_loss.kl_coef",
    "steer_lambda_min": "token_weighting.lambda_min",
    "steer_form": "token_weighting.form",
    "steer_map": "token_weighting.map",
    "steer_scope": "token_weighting.normaliser",
    "steer_floor": "token_weighting.floor",
    "steer_running_decay": "token_weighting.running_decay",
    "fork_top_rho": "token_weighting.top_rho",
    "eaa_alpha": "advantage_shaping.alpha",
    "eaa_kappa": "advantage_shaping.kappa",
}
"""The flat fields of the earlier one-level AlgorithmConfig -> where each lives now (for the error message)."""


class AlgorithmConfig(_Section):
    """One RL algorithm: the knobs of its objective, one section per component. Field help texts appear in
    ``steer train --help-config`` and the Prefect UI, which shows only the chosen variant's fields."""

    name: str = Field("steer", description="Preset this config started from (see ALGORITHMS); informational.")
    advantage_estimator: AdvantageEstimatorName = Field(
        "grpo", description="Outcome advantage: grpo (group z-score), drgrpo, rloo, opo, w_reinforce."
    )
    clip: ClipRange = Field(default_factory=ClipRange, description="PPO clip range (losses and Omega's I_clip).")
    policy_loss: PolicyLoss = Field(
        default_factory=PpoClipLoss, description="Per-token loss: ppo_clip, clip_cov, kl_cov, reinforce."
    )
    loss_agg_mode: AggregationName = Field(
        "token-mean",
        description="token-mean (DAPO, the paper), seq-mean-token-mean (original GRPO; favours short answers), "
        "seq-mean-token-sum, seq-mean-token-sum-norm (Dr.GRPO).",
    )
    token_weighting: TokenWeighting = Field(
        default_factory=NoWeighting, description="Token weights: none, steer, fork_tokens."
    )
    advantage_shaping: AdvantageShaping = Field(
        default_factory=NoShaping, description="Per-token advantage shaping: none or entropy_aware."
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus beta (loss - beta * H). 1e-4..1e-3 barely acts; 0.01 explodes."
    )
    entropy_control: EntropyControl = Field(
        default_factory=FixedEntropyCoef,
        description="fixed (entropy_coef) or adaptive (Skywork-OR1: the coefficient steered toward a target entropy).",
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the reference policy; 0 (the paper) skips it.")
    kl_estimator: KlEstimatorName = Field("k3", description="KL estimator: k1, k2, k3 (Schulman's, non-negative).")
    rollout_correction: RolloutCorrection = Field(
        default_factory=RolloutCorrection,
        description="Importance correction of the sampler/trainer mismatch (TIS or MIS); mode none is off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _sections_by_name(cls, data: Any) -> Any:
        """A component given as a bare name (``policy_loss: clip_cov``) is its section with defaults."""
        if isinstance(data, dict):
            data = {k: {"name": v} if k in SECTIONS and isinstance(v, str) else v for k, v in data.items()}
        return data


# ----------------------------------------------------------------------------------------------------- presets
ALGORITHMS: Registry = Registry("algorithm")
_PAPER_STEER = dict(name="steer", form="first_order", map="exp", lambda_min=0.7, normaliser="group", normaliser_group=8)
"""The paper's STEER weighting (method.md): first-order Omega, exp map, lambda_min 0.7, M over groups of 8."""
_PRESETS: dict[str, dict] = {
    # GRPO with the classic symmetric clip.
    "grpo": dict(clip=dict(eps_high=0.2)),
    # DAPO's clip-higher: eps_high = 0.28 lets low-probability tokens grow.
    "clip_higher": dict(),
    # Clip-higher plus an entropy bonus (the paper's "entropy regularization" arm).
    "entropy_bonus": dict(entropy_coef=1e-3),
    "clip_cov": dict(policy_loss="clip_cov"),
    "kl_cov": dict(policy_loss="kl_cov"),
    # The paper's GRPO row is clip-higher GRPO (method.md): eps 0.2 / 0.28, pinned here whatever the defaults become.
    "grpo_clip_higher": dict(clip=dict(eps_low=0.2, eps_high=0.28, dual_clip_c=10.0)),
    # Clip-Cov with Cui et al.'s 7B recipe (method.md): eps_low = eps_high = 1, ratio 2e-4, cov in (1, 5); no dual
    # clip (their verl loss has none).
    "clip_cov_7b": dict(
        clip=dict(eps_low=1.0, eps_high=1.0, dual_clip_c=None),
        policy_loss=dict(name="clip_cov", clip_ratio=2e-4, cov_lb=1.0, cov_ub=5.0),
    ),
    # STEER as in the paper's main setting: clip-higher, token-mean, lambda_min = 0.7.
    "steer": dict(token_weighting="steer"),
    # The paper's STEER: first-order Omega (Theorem 1), lambda_min 0.7, M over groups of 8 sequences, no floor.
    "steer_paper": dict(token_weighting=_PAPER_STEER),
    # Beyond the paper: steer_paper with M = the 0.99 quantile of |Omega| over each group of 8 (robust to the tail).
    "steer_robust": dict(token_weighting=dict(_PAPER_STEER, normaliser="group_quantile", quantile=0.99)),
    # The released script's STEER: released Omega form, lambda_min 0.8, M over 8 sequences with the floor 0.02.
    "steer_released": dict(token_weighting=dict(_PAPER_STEER, form="released", lambda_min=0.8, floor=0.02)),
    "fork_tokens": dict(token_weighting="fork_tokens"),
    "entropy_aware_adv": dict(advantage_shaping="entropy_aware"),
    # GSPO: sequence-level ratio and clip, the paper's clip range 3e-4 / 4e-4, sequence-mean aggregation, no dual clip.
    "gspo": dict(
        policy_loss="gspo",
        clip=dict(eps_low=3e-4, eps_high=4e-4, dual_clip_c=None),
        loss_agg_mode="seq-mean-token-mean",
    ),
    # CISPO: no lower bound on the IS weight (eps_low 1); eps_high 0.28 is our assumption (MiniMax-M1 omits it).
    "cispo": dict(policy_loss="cispo", clip=dict(eps_low=1.0, eps_high=0.28, dual_clip_c=None)),
    # Skywork-OR1's adaptive entropy control on clip-higher GRPO: target 0.2, delta 0.005, c_0 = 0.
    "adaptive_entropy": dict(entropy_control=dict(name="adaptive", target_entropy=0.2, delta=0.005)),
    # STARE (O1) on clip-higher GRPO with the reference script's settings.
    "stare": dict(token_weighting="stare"),
    # REINFORCE on raw +1/-1 rewards with positive samples down-weighted (lambda = 0.1).
    "w_reinforce": dict(advantage_estimator="w_reinforce", policy_loss="reinforce"),
}
for _name, _overrides in _PRESETS.items():
    ALGORITHMS.register(_name)(_overrides)

AlgorithmName = Literal[tuple(ALGORITHMS.names())]
"""An algorithm preset by name: a drop-down in the Prefect UI's forms."""


def _as_section(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def merge_algorithm(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` (both raw algorithm dicts). A component section of ``over`` without ``name``
    refines ``base``'s component; one with another ``name`` replaces it (the other variant's fields do not carry)."""
    out = dict(base)
    for key, value in over.items():
        if key in SECTIONS:
            old = _as_section(out.get(key)) or {"name": SECTIONS[key][0].model_fields["name"].default}
            new = _as_section(value)
            if isinstance(new, dict) and isinstance(old, dict):
                same = new.get("name", old.get("name")) == old.get("name")
                value = {**old, **new} if same else dict(new)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


def resolve_algorithm(name: str, overrides: dict[str, Any] | None = None) -> AlgorithmConfig:
    """The preset ``name`` with nested ``overrides`` merged in (``merge_algorithm``), validated. Raises a
    ``ValueError`` for an unknown preset and pydantic's ``ValidationError`` (with field paths) for bad settings."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name={name!r} is not one of: {', '.join(ALGORITHMS.names())}")
    return AlgorithmConfig(**merge_algorithm({"name": name, **ALGORITHMS.get(name)}, overrides or {}))


def get_algorithm(name: str, **overrides: Any) -> AlgorithmConfig:
    """``resolve_algorithm(name, overrides)`` with the overrides as keywords."""
    return resolve_algorithm(name, overrides)
