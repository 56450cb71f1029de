"""The objective of one micro-batch, built once from an ``AlgorithmConfig``: ``build_objective(cfg) -> Objective``.

``build_objective`` looks every component up in its registry when the run starts (a bad name fails there, not deep in
the loop) and binds each one's own settings; the ``Objective`` then takes tensors and the mini-batch's global counts
only, so the training loop (``steer.update``) never reads the config:

    loss = aggregate(loss_mat * weights, mask, mode, counts) - entropy_coef * aggregate(H) + kl_coef * aggregate(kl)

The per-token loss, the weights and the aggregation stay separate (style.md, principle 3). Where a new piece goes
(docs/architecture.md): a per-token loss is a function in ``steer.losses`` registered in ``POLICY_LOSSES`` and a
section in ``steer.algorithms``; a token weighting is a builder here registered in ``TOKEN_WEIGHTINGS``; a normaliser
is a class in ``steer.normalisers``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from steer.aggregation import aggregate
from steer.algorithms import AlgorithmConfig, ForkTokenWeighting, NoWeighting, StareWeighting, SteerWeighting
from steer.entropy_control import AdaptiveEntropyCoef, stare_weights
from steer.interventions import ADVANTAGE_SHAPINGS, fork_token_weights
from steer.losses import KL_ESTIMATORS, POLICY_LOSSES, entropy_bonus, kl_penalty
from steer.normalisers import NORMALISERS, MicroMax, Normaliser, OmegaFn
from steer.registry import Registry
from steer.reweighting import estimate_entropy_change, quadrant_stats, token_weights, weight_stats
from steer.rollout_correction import rollout_correction_weights


@dataclass
class TokenContext:
    """Tensors of one micro-batch that token weightings may read. All (N, T)."""

    logp: Tensor  # detached current log-probs
    old_logp: Tensor
    entropy: Tensor  # detached current entropy
    old_entropy: Tensor
    advantages: Tensor  # (N,) or (N, T)
    mask: Tensor
    omega: Tensor  # predicted entropy change
    steer_max_abs: Tensor | None  # normaliser M from a wider scope, or None for this micro-batch's max
    rollout_entropy: float | None = None  # token-mean entropy of the rollout under pi_old (Objective.start_rollout)


Weighting = Callable[[TokenContext], Tensor]
TOKEN_WEIGHTINGS: Registry[Callable[..., Weighting]] = Registry("token weighting")
"""Token weighting name -> builder ``(section) -> weighting(ctx) -> (N, T) detached weights``."""


@TOKEN_WEIGHTINGS.register("none")
def _no_weights(section: NoWeighting) -> Weighting:
    return lambda ctx: torch.ones_like(ctx.mask)


@TOKEN_WEIGHTINGS.register("steer")
def _steer_weights(section: SteerWeighting) -> Weighting:
    params = {} if section.map == "linear" else dict(lambda_min=section.lambda_min)
    weigh = functools.partial(token_weights, section.map, floor=section.floor, **params)
    return lambda ctx: weigh(ctx.omega, ctx.mask, max_abs=ctx.steer_max_abs)


@TOKEN_WEIGHTINGS.register("fork_tokens")
def _fork_weights(section: ForkTokenWeighting) -> Weighting:
    return lambda ctx: fork_token_weights(ctx.entropy, ctx.mask, top_rho=section.top_rho)


@TOKEN_WEIGHTINGS.register("stare")
def _stare_weights(section: StareWeighting) -> Weighting:
    params = own_settings(section)

    def weights(ctx):
        return stare_weights(ctx.logp, ctx.advantages, ctx.mask, rollout_entropy=ctx.rollout_entropy, **params)

    weights.reads_rollout_entropy = True  # its gate needs H_k under pi_old before the update
    return weights


# Omega reads H under the current policy in Theorem 1's form and the rollout-time H_old in the released code's
OMEGA_ENTROPY = {"first_order": "current", "released": "old"}


def omega_function(form: str, *, eps_low: float, eps_high: float) -> OmegaFn:
    """Omega (N, T) in ``form``: ``(logp, old_logp, entropy, old_entropy, advantages, mask) -> (N, T)``, detached."""
    current = OMEGA_ENTROPY[form] == "current"

    def omega(logp, old_logp, entropy, old_entropy, advantages, mask) -> Tensor:
        h = entropy if current else old_entropy
        return estimate_entropy_change(
            logp.detach(), old_logp, h.detach(), advantages, mask, form=form, eps_low=eps_low, eps_high=eps_high
        )

    return omega


@dataclass(frozen=True)
class Objective:
    """The per-micro-batch loss of one algorithm, its components resolved. Call it with tensors and counts."""

    loss_fn: Callable[..., tuple[Tensor, dict[str, Tensor]]]  # per-token loss, its settings bound
    weighting: Weighting
    shaping: Callable[[Tensor, Tensor, Tensor], Tensor] | None  # (advantages, entropy, mask) -> (N, T)
    omega: OmegaFn
    normaliser_cls: type[Normaliser]
    normaliser_settings: dict  # decay, group, quantile
    loss_agg_mode: str
    entropy_coef: float
    kl_coef: float
    kl_fn: Callable[[Tensor, Tensor], Tensor]
    entropy_controller: AdaptiveEntropyCoef | None = None  # replaces entropy_coef when set
    rollout: dict = field(default_factory=dict)  # per-rollout values set by start_rollout: entropy, entropy_coef
    # (old_logp, sampling_logp, mask) -> ((N, T) importance weights, metrics); None: no mismatch correction
    correction: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]] | None = None

    def start_rollout(self, old_entropy: Tensor, mask: Tensor) -> dict[str, float]:
        """Once per rollout, before its update: measure the rollout's token-mean entropy H_k under pi_old (one host
        sync), which STARE's gate reads, and step the adaptive entropy coefficient. Returns its metrics."""
        valid = mask.bool()
        h = float(torch.where(valid, old_entropy, torch.zeros_like(old_entropy)).sum() / valid.sum().clamp(min=1))
        coef = self.entropy_coef if self.entropy_controller is None else self.entropy_controller.update(h)
        self.rollout.update(entropy=h, entropy_coef=coef)
        return {"actor/entropy_coef": coef}

    @property
    def needs_old_entropy_first(self) -> bool:
        """True when ``start_rollout`` must see the old policy's entropies before the first update forward: STARE's
        gate and the adaptive entropy coefficient read the rollout's H_k (``steer.update.reuses_forward_as_old``)."""
        return self.entropy_controller is not None or getattr(self.weighting, "reads_rollout_entropy", False)

    def state_dict(self) -> dict:
        """State that outlives one update (the adaptive entropy coefficient), for the checkpoint."""
        return {} if self.entropy_controller is None else {"entropy_control": self.entropy_controller.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.entropy_controller is not None and "entropy_control" in state:
            self.entropy_controller.load_state_dict(state["entropy_control"])

    def new_normaliser(self) -> Normaliser:
        """A fresh normaliser (its state lives for one rollout's update)."""
        return self.normaliser_cls(self.omega, **self.normaliser_settings)

    def __call__(
        self,
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
        sampling_logp: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The loss of one micro-batch, scaled so that summing it over the micro-batches of a mini-batch gives the
        mini-batch loss (the global counts ``num_tokens``, ``num_seqs``, ``max_len`` belong to the mini-batch).

        Args:
            logp, entropy: (N, T) under the parameters being trained, with gradient.
            old_logp, old_entropy: (N, T) under the rollout policy, detached.
            advantages: (N,) per response. mask: (N, T).
            steer_max_abs: STEER's normaliser M from the normaliser (None: this micro-batch's maximum).
            ref_logp: (N, T) reference log-probs, needed when ``kl_coef > 0``.
            sampling_logp: (N, T) the sampler's log-probs, needed when a rollout correction is set.
        Returns:
            loss (scalar), metrics (0-dim tensors, micro-batch means), per-token tensors (N, T): omega, weights,
            advantages (after shaping) for persistence.
        """
        adv = advantages if self.shaping is None else self.shaping(advantages, entropy.detach(), mask)  # (N, T)
        loss_mat, metrics = self.loss_fn(logp, old_logp, adv, mask, generator=generator)  # (N, T)
        if self.correction is not None:  # TIS / MIS on the per-token loss (steer.rollout_correction)
            if sampling_logp is None:
                raise ValueError(
                    "algorithm.rollout_correction needs the sampler's log-probs (PolicyBatch.sampling_logp): set "
                    "rollout_correction.mode=none or use a rollout backend that returns them (hf, vllm)"
                )
            is_weights, is_metrics = self.correction(old_logp, sampling_logp, mask)  # (N, T), detached
            loss_mat = loss_mat * is_weights
            metrics = {**metrics, **is_metrics}
        omega = self.omega(logp, old_logp, entropy, old_entropy, adv, mask)  # (N, T), a diagnostic for every arm
        ctx = TokenContext(
            logp.detach(), old_logp, entropy.detach(), old_entropy, adv, mask, omega, steer_max_abs,
            rollout_entropy=self.rollout.get("entropy"),
        )  # fmt: skip
        weights = self.weighting(ctx)  # (N, T), detached
        counts = dict(num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
        pg_loss = aggregate(loss_mat * weights, mask, self.loss_agg_mode, **counts)
        loss = pg_loss
        entropy_coef = self.rollout.get("entropy_coef", self.entropy_coef)
        if entropy_coef > 0:
            loss = loss + aggregate(entropy_bonus(entropy, entropy_coef), mask, self.loss_agg_mode, **counts)
        if self.kl_coef > 0:
            if ref_logp is None:
                raise ValueError("kl_coef > 0 needs ref_logp: set kl_coef=0 or keep a reference model")
            kl = self.kl_fn(logp, ref_logp)  # (N, T)
            loss = loss + self.kl_coef * aggregate(kl, mask, self.loss_agg_mode, **counts)
        metrics = {**metrics, "actor/pg_loss": pg_loss.detach()}
        metrics.update(weight_stats(omega, weights, mask))
        metrics.update(quadrant_stats(omega, logp.detach(), entropy.detach(), adv, mask))
        return loss, metrics, {"omega": omega, "weights": weights, "advantages": adv}


def own_settings(section) -> dict:
    """A component section's fields but its ``name``: the keyword arguments of the component's function."""
    return section.model_dump(exclude={"name"})


def build_objective(cfg: AlgorithmConfig) -> Objective:
    """Resolve every component of ``cfg`` from its registry, once. Unknown names raise a ``KeyError`` listing the
    valid ones."""
    weighting = cfg.token_weighting
    steer = isinstance(weighting, SteerWeighting)
    shaping = None
    if cfg.advantage_shaping.name != "none":
        shaping = functools.partial(
            ADVANTAGE_SHAPINGS.get(cfg.advantage_shaping.name), **own_settings(cfg.advantage_shaping)
        )
    KL_ESTIMATORS.get(cfg.kl_estimator)  # an unknown name fails here, not at the first KL step
    rc = cfg.rollout_correction
    correction = None
    if rc.mode != "none":
        correction = functools.partial(rollout_correction_weights, **rc.model_dump())
    return Objective(
        loss_fn=functools.partial(
            POLICY_LOSSES.get(cfg.policy_loss.name), **cfg.clip.model_dump(), **own_settings(cfg.policy_loss)
        ),
        weighting=TOKEN_WEIGHTINGS.get(weighting.name)(weighting),
        shaping=shaping,
        omega=omega_function(
            weighting.form if steer else "first_order", eps_low=cfg.clip.eps_low, eps_high=cfg.clip.eps_high
        ),
        # only STEER's weights read M; every other arm keeps the (free) micro-batch default
        normaliser_cls=NORMALISERS.get(weighting.normaliser) if steer else MicroMax,
        normaliser_settings=dict(
            decay=weighting.running_decay, group=weighting.normaliser_group, quantile=weighting.quantile
        )
        if steer
        else {},
        loss_agg_mode=cfg.loss_agg_mode,
        entropy_coef=cfg.entropy_coef,
        kl_coef=cfg.kl_coef,
        kl_fn=functools.partial(kl_penalty, kind=cfg.kl_estimator),
        entropy_controller=AdaptiveEntropyCoef(**own_settings(cfg.entropy_control))
        if cfg.entropy_control.name == "adaptive"
        else None,
        correction=correction,
    )
