"""A tabular softmax policy: the setting of the STEER paper's Theorem 1, for checking the entropy-change estimator.

Every state s has its own free logits z_s (V,), so an update at one state cannot touch another ("parameter-independent
softmax"). One token a_s is sampled per state with advantage A_s; one SGD step of size eta on the token-mean clipped
PPO loss over the L = S tokens changes the entropy at s by (eta / L) * Omega_s + O(eta^2) when only the sampled
logit moves (the theorem's assumption). With ``sampled_only=False`` every logit of the state moves (the full softmax
gradient), which the theorem does not cover; there the estimator is a ranking heuristic.

Used by ``tests/test_theorem1.py`` and ``bench/bench_estimator_tabular.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from steer.aggregation import aggregate
from steer.losses import POLICY_LOSSES
from steer.reweighting import estimate_entropy_change


def entropy_of_logits(logits: Tensor) -> Tensor:
    """H of softmax(logits) along the last axis: (..., V) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class TabularStep:
    """Entropies before and after one step, and the two estimators, per state (S,)."""

    entropy_before: Tensor
    entropy_after: Tensor
    omega_first_order: Tensor
    omega_released: Tensor
    scale: float  # eta / L: multiply Omega by this to predict the realized change

    @property
    def realized(self) -> Tensor:
        return self.entropy_after - self.entropy_before


def tabular_step(
    logits: Tensor,
    old_logits: Tensor,
    actions: Tensor,
    advantages: Tensor,
    *,
    eta: float,
    sampled_only: bool = True,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float | None = None,
) -> TabularStep:
    """One SGD step on the token-mean ``ppo_clip`` loss of a tabular policy.

    Args:
        logits: (S, V) current free logits, one row per state. old_logits: (S, V) of the rollout policy.
        actions: (S,) sampled token per state. advantages: (S,).
        eta: SGD step size. sampled_only: move only z[s, a_s] (Theorem 1's assumption) or every logit.
    """
    s = logits.shape[0]
    z = logits.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(z, -1).gather(-1, actions[:, None])  # (S, 1): N = S responses of T = 1 token
    old_logp = torch.log_softmax(old_logits, -1).gather(-1, actions[:, None])  # (S, 1)
    mask = torch.ones_like(logp)
    loss_mat, _ = POLICY_LOSSES.get("ppo_clip")(
        logp, old_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
    )
    (grad,) = torch.autograd.grad(aggregate(loss_mat, mask, "token-mean"), z)  # (S, V)
    if sampled_only:
        grad = torch.zeros_like(grad).scatter_(-1, actions[:, None], grad.gather(-1, actions[:, None]))
    new_logits = z.detach() - eta * grad  # (S, V)
    h = entropy_of_logits(logits)  # (S,)
    h_old = entropy_of_logits(old_logits)
    lp = logp.detach()
    first = estimate_entropy_change(lp, old_logp, h[:, None], advantages, mask, eps_low=eps_low, eps_high=eps_high)
    released = estimate_entropy_change(lp, old_logp, h_old[:, None], advantages, mask, form="released")
    return TabularStep(h, entropy_of_logits(new_logits), first[:, 0], released[:, 0], eta / s)


def random_tabular_problem(
    num_states: int, vocab: int, *, seed: int, logit_scale: float = 2.0, drift: float = 0.1
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random float64 logits (S, V), old logits drifted by ``drift``, actions sampled from the old policy (S,) and
    +1/-1 advantages (S,)."""
    g = torch.Generator().manual_seed(seed)
    old = logit_scale * torch.randn(num_states, vocab, generator=g, dtype=torch.float64)
    cur = old + drift * torch.randn(num_states, vocab, generator=g, dtype=torch.float64)
    actions = torch.multinomial(torch.softmax(old, -1), 1, generator=g)[:, 0]
    adv = torch.where(torch.rand(num_states, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    return cur, old, actions, adv
