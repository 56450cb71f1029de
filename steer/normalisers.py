"""STEER's normaliser M as a strategy, chosen by name from ``NORMALISERS``.

STEER's weight of a token is exp(ln(lambda_min) |Omega| / M) (``steer.reweighting.steer_weights``); the scope over
which M is taken is the normaliser (docs/algorithms.md, "STEER weights"):

- ``group`` (default): M = max |Omega| over each group of ``group`` consecutive sequences of the mini-batch (8, the
  released code's micro-batch of 8 sequences per GPU), whatever the memory micro-batch size; M is per sequence (N, 1);
- ``group_quantile``: as ``group`` with M = the ``quantile`` (0.99) of |Omega| over the group's valid tokens, robust
  to the heavy tail of |Omega| (tokens above it get lambda_min);
- ``micro``: the memory micro-batch's own maximum (the weight map takes it itself: M = None), so the micro-batch
  size is a hyperparameter; equal to ``group`` when micro_batch_size == group;
- ``mini``: the maximum over one optimizer step's mini-batch, from a no-grad forward at the step's parameters;
- ``rollout``: the maximum over the rollout batch at the rollout policy (logp = old_logp, r = 1);
- ``running``: M <- max(M_group, decay * M) over the groups of one rollout's update, in order.

One interface, called by ``steer.update.policy_update`` for every normaliser alike; a new normaliser (a cross-rank
maximum) is one class here and one registry line, with no change to the loop:

- ``start(rollout)``: once per rollout, before the first optimizer step;
- ``before_step(mini, score)``: before each optimizer step; ``score()`` runs the no-grad forward of the mini-batch
  at the current parameters and returns (logp, entropy) (N, T), so only a normaliser that calls it pays for it;
- ``for_micro(micro, logp, entropy) -> M | None``: the normaliser of one micro-batch (a 0-dim tensor or (N, 1) per
  sequence), or None for the micro-batch's own maximum. The loop passes the micro-batches of a mini-batch in order,
  as consecutive slices (``torch.arange(len(mini)).split(micro_batch_size)``); the group normalisers rely on it.

``omega`` is the objective's Omega function ``(logp, old_logp, entropy, old_entropy, advantages, mask) -> (N, T)``.
Normalisers keep state for one rollout; ``steer.objective.Objective.new_normaliser`` makes a fresh one per update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from steer import choices
from steer.batch import PolicyBatch
from steer.registry import Registry
from steer.reweighting import omega_abs_max, update_running_max

OmegaFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
ScoreFn = Callable[[], tuple[Tensor, Tensor]]

NORMALISERS: Registry[type[Normaliser]] = Registry("STEER normaliser", choices.NORMALISERS)


class Normaliser:
    """Base: the micro-batch's own maximum (nothing needed before the step, ``None`` per micro-batch)."""

    needs_old_before_update = False
    """True when ``start`` or ``before_step`` reads ``old_logp``/``old_entropy``, which must then be scored before
    the update (``steer.update.reuses_forward_as_old``)."""
    reduce_max = staticmethod(lambda m: m)
    """The maximum of a tensor over trainer ranks (set by ``policy_update`` on a rank; identity in one process)."""

    def __init__(self, omega: OmegaFn, *, decay: float = 1.0, group: int = 8, quantile: float = 0.99):
        self.omega = omega
        self.decay = decay
        self.group = group
        self.quantile = quantile

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
        self.m = self.reduce_max(omega_abs_max(omega, mini.response_mask))  # a rank's share: max over the ranks

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        return self.m


def group_reduce(omega: Tensor, mask: Tensor, group: int, quantile: float | None = None) -> Tensor:
    """M per group of ``group`` consecutive rows: max |Omega| (``quantile`` None) or that quantile of |Omega| over
    the group's valid tokens; 0 for a group without a valid token. (N, T) -> (N_groups,); the last group may be short.
    """
    n, t = omega.shape
    n_groups = -(-n // group)
    pad = n_groups * group - n
    valid = mask.bool()
    a = torch.where(valid, omega.abs(), torch.zeros_like(omega))
    if pad:  # pad rows: no valid token, so they change neither the max nor the quantile
        a = torch.cat([a, a.new_zeros(pad, t)])
        valid = torch.cat([valid, valid.new_zeros(pad, t)])
    a, valid = a.reshape(n_groups, group * t), valid.reshape(n_groups, group * t)  # (N_groups, group * T)
    if quantile is None:
        return a.max(dim=-1).values
    q = torch.nanquantile(torch.where(valid, a, torch.full_like(a, float("nan"))).float(), quantile, dim=-1)
    return torch.nan_to_num(q, nan=0.0).to(omega.dtype)  # (N_groups,); an all-padding group gives 0


@NORMALISERS.register("group")
class GroupMax(Normaliser):
    """M = max |Omega| over each group of ``group`` consecutive sequences of the mini-batch (the released code's
    micro-batch of 8 sequences), independent of the memory micro-batch size. A micro-batch that holds whole groups
    is normalised from its own forward (no cost); otherwise the groups straddle micro-batches and M comes from one
    no-grad forward of the mini-batch at the same parameters (``score``). Returns M per sequence, (N, 1)."""

    needs_old_before_update = True  # a micro-batch that straddles groups scores the mini-batch against old_logp
    quantile_of: float | None = None  # None: the maximum
    mini: PolicyBatch | None = None  # the optimizer step's mini-batch, its scorer, and the rows seen of it so far
    score: ScoreFn | None = None
    offset: int = 0
    m_mini: Tensor | None = None  # M of every group of the mini-batch, when a micro-batch straddles groups

    def before_step(self, mini: PolicyBatch, score: ScoreFn) -> None:
        self.mini, self.score, self.offset, self.m_mini = mini, score, 0, None

    def _reduce(self, omega: Tensor, mask: Tensor) -> Tensor:
        return group_reduce(omega, mask, self.group, self.quantile_of)  # (N_groups,)

    def _per_group(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> tuple[Tensor, int]:
        """M of the groups that the micro-batch's rows belong to, and the first row's position in its group."""
        start, n = self.offset, len(micro)
        self.offset += n
        if start % self.group == 0 and n % self.group == 0:
            mask = micro.response_mask
            omega = self.omega(logp, micro.old_logp, entropy, micro.old_entropy, micro.advantages, mask)
            return self._reduce(omega, mask), 0
        if self.m_mini is None:  # groups straddle micro-batches: M of every group of the mini-batch, once
            b = self.mini
            mlogp, ment = self.score()
            self.m_mini = self._reduce(
                self.omega(mlogp, b.old_logp, ment, b.old_entropy, b.advantages, b.response_mask), b.response_mask
            )
        first, last = start // self.group, (start + n - 1) // self.group
        return self.m_mini[first : last + 1], start % self.group

    def _rows(self, m_groups: Tensor, skip: int, n: int) -> Tensor:
        return m_groups.repeat_interleave(self.group)[skip : skip + n, None]  # (N, 1)

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        m_groups, skip = self._per_group(micro, logp, entropy)
        return self._rows(m_groups, skip, len(micro))


@NORMALISERS.register("group_quantile")
class GroupQuantile(GroupMax):
    """M = the ``quantile`` (default 0.99) of |Omega| over each group's valid tokens instead of its maximum: the
    measured |Omega| tail (max about 33x the mean) makes max-normalised weights inert; tokens above M get
    lambda_min (the weight map clamps)."""

    def __init__(self, omega: OmegaFn, **kwargs):
        super().__init__(omega, **kwargs)
        self.quantile_of = self.quantile


@NORMALISERS.register("running")
class RunningMax(GroupMax):
    """M <- max(M_group, decay * M) over the normaliser groups of one rollout's update, in the order they are
    trained; decay = 1 keeps the maximum so far. Over groups of fixed size, so independent of the micro-batch split.
    Reset per rollout (``start``): its state never outlives one update, so a resumed run needs no normaliser state
    in the checkpoint and reproduces the unbroken run."""

    m: Tensor | None = None

    def start(self, rollout: PolicyBatch) -> None:
        self.m, self._last_group = None, -1

    def for_micro(self, micro: PolicyBatch, logp: Tensor, entropy: Tensor) -> Tensor | None:
        start = self.offset
        m_groups, skip = self._per_group(micro, logp, entropy)
        out = []
        first = start // self.group
        for k, m_g in enumerate(m_groups):
            if skip and k == 0 and first == self._last_group:
                out.append(self.m)  # this group's M was already folded in by the previous micro-batch
                continue
            self.m = update_running_max(self.m, m_g, decay=self.decay)
            self._last_group = first + k
            out.append(self.m)
        return self._rows(torch.stack(out), skip, len(micro))
