"""STEER's normaliser M = max |Omega| as a strategy, chosen by name from ``NORMALISERS``.

STEER's weight of a token is exp(ln(lambda_min) |Omega| / M) (``steer.reweighting.steer_weights``); the scope over
which M is taken is the normaliser (docs/algorithms.md, "STEER weights"):

- ``micro``: the micro-batch's own maximum, as in the released code (the weight map takes it itself: M = None);
- ``mini``: the maximum over one optimizer step's mini-batch, from a no-grad forward at the step's parameters;
- ``rollout``: the maximum over the rollout batch at the rollout policy (logp = old_logp, r = 1);
- ``running``: M <- max(M_micro, decay * M) over the micro-batches of one rollout's update.

One interface, called by ``steer.update.policy_update`` for every normaliser alike; a new normaliser (a cross-rank
maximum, a quantile) is one class here and one registry line, with no change to the loop:

- ``start(rollout)``: once per rollout, before the first optimizer step;
- ``before_step(mini, score)``: before each optimizer step; ``score()`` runs the no-grad forward of the mini-batch
  at the current parameters and returns (logp, entropy) (N, T), so only a normaliser that calls it pays for it;
- ``for_micro(micro, logp, entropy) -> M | None``: the normaliser of one micro-batch (a 0-dim tensor), or None for
  the micro-batch's own maximum.

``omega`` is the objective's Omega function ``(logp, old_logp, entropy, old_entropy, advantages, mask) -> (N, T)``.
Normalisers keep state for one rollout; ``steer.objective.Objective.new_normaliser`` makes a fresh one per update.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from steer.batch import PolicyBatch
from steer.registry import Registry
from steer.reweighting import omega_abs_max, update_running_max

OmegaFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
ScoreFn = Callable[[], tuple[Tensor, Tensor]]

NORMALISERS: Registry[type[Normaliser]] = Registry("STEER normaliser")


class Normaliser:
    """Base: the micro-batch's own maximum (nothing needed before the step, ``None`` per micro-batch)."""

    needs_old_before_update = False
    """True when ``start`` or ``before_step`` reads ``old_logp``/``old_entropy``, which must then be scored before
    the update (``steer.update.reuses_forward_as_old``)."""

    def __init__(self, omega: OmegaFn, *, decay: float = 1.0):
        self.omega = omega
        self.decay = decay

    def start(self, rollout: PolicyBatch) -> None:
        """Called once per rollout with the whole batch (``old_logp``, ``old_entropy`` set)."""

    def before_step(self, mini: PolicyBatch, score: ScoreFn) -> None:
        """Called before each optimizer step with its mini-batch."""

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        """M for one micro-batch; ``logp``, ``entropy`` (N, T) are its current values."""
        return None


@NORMALISERS.register("micro")
class MicroMax(Normaliser):
    """The released code's scope: M = max |Omega| over the micro-batch (left to the weight map)."""


@NORMALISERS.register("rollout")
class RolloutMax(Normaliser):
    """M = max |Omega| over the rollout batch at the rollout policy (r = 1), fixed for the whole update."""

    m: Tensor | None = None
    needs_old_before_update = True

    def start(self, rollout: PolicyBatch) -> None:
        b = rollout
        omega = self.omega(b.old_logp, b.old_logp, b.old_entropy, b.old_entropy, b.advantages, b.response_mask)
        self.m = omega_abs_max(omega, b.response_mask)

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        return self.m


@NORMALISERS.register("mini")
class MiniMax(Normaliser):
    """M = max |Omega| over the optimizer step's mini-batch at the step's parameters (one no-grad forward)."""

    m: Tensor | None = None
    needs_old_before_update = True

    def before_step(self, mini: PolicyBatch, score: ScoreFn) -> None:
        logp, entropy = score()  # (N, T) each
        omega = self.omega(logp, mini.old_logp, entropy, mini.old_entropy, mini.advantages, mini.response_mask)
        self.m = omega_abs_max(omega, mini.response_mask)

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        return self.m


@NORMALISERS.register("running")
class RunningMax(Normaliser):
    """M <- max(M_micro, decay * M) over the micro-batches of the update; decay = 1 keeps the all-time maximum."""

    m: Tensor | None = None

    def start(self, rollout: PolicyBatch) -> None:
        self.m = None

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        mask = micro.response_mask
        omega = self.omega(logp, micro.old_logp, entropy, micro.old_entropy, micro.advantages, mask)
        self.m = update_running_max(self.m, omega_abs_max(omega, mask), decay=self.decay)
        return self.m
