"""The policy update: old log-probs, then mini-batches of optimizer steps, each accumulated over micro-batches.

Layout follows method.md ("The paper's setup"): a rollout batch of N responses is split into mini-batches (one
optimizer step each) and every mini-batch into micro-batches (gradient accumulation). Each micro-batch's loss is
scaled by the mini-batch's global counts, so the gradient does not depend on the micro-batch size
(``steer.aggregation``). STEER's normaliser M is taken over the scope the algorithm names.

This module holds torch code only: no Prefect, no MLflow, no I/O. ``PolicyBatch`` is the trainer's view of a rollout.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from steer.algorithms import AlgorithmConfig, omega_for, policy_objective
from steer.logprobs import token_logprobs_and_entropy
from steer.reweighting import omega_abs_max, update_running_max


@dataclass
class PolicyBatch:
    """N prompt+response sequences laid out for teacher-forced scoring.

    Prompts are left-padded to a common length P and responses right-padded to T, so response token t of every row
    sits at column P + t and is predicted by the logits at column P + t - 1.
    """

    input_ids: Tensor  # (N, P + T) long
    attention_mask: Tensor  # (N, P + T) long, 0 on both paddings
    response_mask: Tensor  # (N, T) float, 1 on response tokens (EOS included)
    advantages: Tensor  # (N,) float
    old_logp: Tensor | None = None  # (N, T) under the rollout policy
    old_entropy: Tensor | None = None  # (N, T)
    ref_logp: Tensor | None = None  # (N, T) under the reference policy, for a KL penalty

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def response_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_len :]  # (N, T)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: Tensor) -> PolicyBatch:
        """Rows ``index`` of every tensor (a mini- or micro-batch)."""
        return PolicyBatch(**{f.name: _rows(getattr(self, f.name), index) for f in fields(self)})

    def to(self, device: torch.device | str) -> PolicyBatch:
        return PolicyBatch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _rows(x: Tensor | None, index: Tensor) -> Tensor | None:
    return None if x is None else x[index]


def _move(x: Tensor | None, device) -> Tensor | None:
    return None if x is None else x.to(device)


def build_policy_batch(
    prompt_ids: list[list[int]],
    group_index: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    advantages: Tensor,
    *,
    pad_id: int,
) -> PolicyBatch:
    """Lay out a rollout for the trainer.

    Args:
        prompt_ids: B unpadded prompts. group_index: (N,) the prompt row of each response.
        response_ids: (N, T) right-padded. response_mask: (N, T). advantages: (N,).
    """
    p = max(len(ids) for ids in prompt_ids)
    prompts = torch.full((len(prompt_ids), p), pad_id, dtype=torch.long)  # (B, P) left-padded
    prompt_mask = torch.zeros(len(prompt_ids), p, dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        prompts[i, p - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        prompt_mask[i, p - len(ids) :] = 1
    input_ids = torch.cat([prompts[group_index], response_ids.long()], dim=1)  # (N, P + T)
    attention_mask = torch.cat([prompt_mask[group_index], response_mask.long()], dim=1)  # (N, P + T)
    return PolicyBatch(input_ids, attention_mask, response_mask.float(), advantages.float())


def forward_logprobs(
    model: torch.nn.Module, batch: PolicyBatch, *, temperature: float = 1.0, autocast_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """log pi(a_t | s_t) and H(s_t) of every response token, (N, T) each, with gradient if enabled."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P + T)
    t = batch.response_mask.shape[1]
    ctx = (
        torch.autocast(device_type=batch.input_ids.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=t + 1,  # only the logits that predict response tokens (and one spare)
        )
    logits = out.logits[:, :-1]  # (N, T, V): column P + t - 1 predicts response token t
    return token_logprobs_and_entropy(logits, batch.response_ids, temperature=temperature)


@torch.no_grad()
def score_batch(
    model: torch.nn.Module,
    batch: PolicyBatch,
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """No-grad log-probs and entropies of the whole batch, micro-batch by micro-batch: (N, T), (N, T)."""
    logps, ents = [], []
    for idx in torch.arange(len(batch)).split(micro_batch_size):
        logp, ent = forward_logprobs(model, batch.select(idx), temperature=temperature, autocast_dtype=autocast_dtype)
        logps.append(logp)
        ents.append(ent)
    mask = batch.response_mask
    return torch.cat(logps) * mask, torch.cat(ents) * mask  # (N, T), zeros on padding


@dataclass
class UpdateResult:
    """What one rollout's update produced: metrics averaged over its micro-batches, and the per-token tensors of
    the first epoch (as used in the loss) for persistence."""

    metrics: dict[str, float]
    omega: Tensor  # (N, T)
    weights: Tensor  # (N, T)
    token_advantages: Tensor  # (N, T)


def policy_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: PolicyBatch,
    cfg: AlgorithmConfig,
    *,
    mini_batch_size: int,
    micro_batch_size: int,
    epochs: int = 1,
    temperature: float = 1.0,
    max_grad_norm: float = 1.0,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    shuffle: bool = True,
) -> UpdateResult:
    """Optimizer steps on one rollout batch (``batch.old_logp`` and ``old_entropy`` must be set).

    Args:
        mini_batch_size: responses per optimizer step. micro_batch_size: responses per forward/backward.
        epochs: passes over the rollout (PPO epochs; the paper uses 1).
        generator: drives the shuffle and Clip-Cov's random choice; seed it for reproducibility.
    """
    if batch.old_logp is None or batch.old_entropy is None:
        raise ValueError("batch.old_logp / old_entropy are missing: score the batch with score_batch() first")
    if micro_batch_size > mini_batch_size or mini_batch_size % micro_batch_size:
        raise ValueError(
            f"micro_batch_size={micro_batch_size} must divide mini_batch_size={mini_batch_size}: "
            "set micro_batch_size to a divisor of mini_batch_size"
        )
    n, t = batch.response_mask.shape
    sums: dict[str, Tensor | float] = defaultdict(float)  # tensors until the end: no device sync per micro-batch
    n_micro = 0
    device = batch.response_mask.device
    omega_all, weights_all, adv_all = (torch.zeros(n, t, device=device) for _ in range(3))
    seen = torch.zeros(n, dtype=torch.bool)
    running_max: Tensor | None = None
    rollout_max = None
    if cfg.steer_scope == "rollout":  # Omega at the rollout policy: logp = old_logp, r = 1
        omega0 = omega_for(cfg, batch.old_logp, batch.old_logp, batch.old_entropy, batch.old_entropy,
                           batch.advantages, batch.response_mask)  # fmt: skip
        rollout_max = omega_abs_max(omega0, batch.response_mask)

    for _ in range(epochs):
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for mini_idx in order.split(mini_batch_size):
            mini = batch.select(mini_idx)
            counts = dict(num_tokens=mini.response_mask.sum(), num_seqs=len(mini), max_len=t)
            scope_max = rollout_max
            if cfg.steer_scope == "mini" and cfg.token_weighting == "steer":
                logp0, ent0 = score_batch(
                    model, mini, micro_batch_size=micro_batch_size, temperature=temperature,
                    autocast_dtype=autocast_dtype,
                )  # fmt: skip
                omega0 = omega_for(cfg, logp0, mini.old_logp, ent0, mini.old_entropy, mini.advantages,
                                   mini.response_mask)  # fmt: skip
                scope_max = omega_abs_max(omega0, mini.response_mask)
            for micro_idx in torch.arange(len(mini)).split(micro_batch_size):
                micro = mini.select(micro_idx)
                logp, entropy = forward_logprobs(model, micro, temperature=temperature, autocast_dtype=autocast_dtype)
                if cfg.steer_scope == "running":
                    omega_m = omega_for(cfg, logp, micro.old_logp, entropy, micro.old_entropy, micro.advantages,
                                        micro.response_mask)  # fmt: skip
                    running_max = update_running_max(
                        running_max, omega_abs_max(omega_m, micro.response_mask), decay=cfg.steer_running_decay
                    )
                    scope_max = running_max
                loss, metrics, per_token = policy_objective(
                    cfg, logp=logp, old_logp=micro.old_logp, entropy=entropy, old_entropy=micro.old_entropy,
                    advantages=micro.advantages, mask=micro.response_mask, steer_max_abs=scope_max,
                    ref_logp=micro.ref_logp, generator=generator, **counts,
                )  # fmt: skip
                loss.backward()
                rows = mini_idx[micro_idx]
                first = ~seen[rows]
                omega_all[rows[first]] = per_token["omega"][first].float()
                weights_all[rows[first]] = per_token["weights"][first].float()
                adv_all[rows[first]] = _expand(per_token["advantages"], t)[first].float()
                seen[rows] = True
                valid = micro.response_mask.bool()
                metrics["actor/entropy"] = (entropy.detach() * valid).sum() / valid.sum().clamp(min=1)
                for k, v in metrics.items():
                    sums[k] += v.detach() if isinstance(v, Tensor) else v
                n_micro += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            sums["actor/grad_norm"] += grad_norm.detach()
            sums["_steps"] += 1
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    steps = sums.pop("_steps")
    out = {k: float(v) / n_micro for k, v in sums.items() if k != "actor/grad_norm"}
    out["actor/grad_norm"] = float(sums["actor/grad_norm"]) / steps
    out["actor/optimizer_steps"] = steps
    out["actor/lr"] = optimizer.param_groups[0]["lr"]
    return UpdateResult(out, omega_all, weights_all, adv_all)


def _expand(adv: Tensor, t: int) -> Tensor:
    return adv[:, None].expand(-1, t) if adv.dim() == 1 else adv  # (N,) -> (N, T)
