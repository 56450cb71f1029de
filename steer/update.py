"""The policy update: mini-batches of optimizer steps over one rollout, each accumulated over micro-batches.

Layout follows method.md ("The paper's setup"): a rollout batch of N responses (``steer.batch.PolicyBatch``, scored
by ``steer.scoring.score_batch``) is split into mini-batches (one optimizer step each) and every mini-batch into
micro-batches (gradient accumulation). Each micro-batch's loss is scaled by the mini-batch's global counts, so the
gradient does not depend on the micro-batch size (``steer.aggregation``). The loss is the algorithm's
``steer.objective.Objective``; STEER's normaliser M comes from the objective's normaliser (``steer.normalisers``).

This module holds torch code only: no Prefect, no MLflow, no I/O, no config.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from steer.batch import PolicyBatch
from steer.distributed.partition import Partition, micro_generators
from steer.objective import Objective
from steer.ops import token_advantages
from steer.scoring import forward_logprobs, score_batch


@dataclass
class UpdateResult:
    """What one rollout's update produced: metrics averaged over its micro-batches, and the per-token tensors of
    the first epoch (as used in the loss) for persistence."""

    metrics: dict[str, float]
    omega: Tensor  # (N, T)
    weights: Tensor  # (N, T)
    token_advantages: Tensor  # (N, T)


def reuses_forward_as_old(objective: Objective, *, num_responses: int, mini_batch_size: int, epochs: int) -> bool:
    """Whether ``policy_update`` can take the old policy's log-probs from its own forward instead of a separate
    no-grad pass: the update is on-policy (one epoch, one optimizer step over the whole rollout, so every micro-batch
    is scored at the parameters that sampled it) and neither the normaliser nor the objective's rollout-level part
    (STARE's gate, the adaptive entropy coefficient) reads ``old_logp``/``old_entropy`` before the first forward.
    Then old_logp = logp.detach() exactly and r = 1, as TRL does when ``num_iterations = 1``."""
    one_step = epochs == 1 and mini_batch_size >= num_responses
    first = objective.new_normaliser().needs_old_before_update or objective.needs_old_entropy_first
    return one_step and not first


def policy_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: PolicyBatch,
    objective: Objective,
    *,
    mini_batch_size: int,
    micro_batch_size: int,
    epochs: int = 1,
    temperature: float = 1.0,
    max_grad_norm: float = 1.0,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    shuffle: bool = True,
    max_response_len: int | None = None,
    partition: Partition | None = None,
) -> UpdateResult:
    """Optimizer steps on one rollout batch.

    ``batch.old_logp`` and ``old_entropy`` come from ``score_batch``, or are left ``None`` when
    ``reuses_forward_as_old`` holds: then each micro-batch's own forward (detached, masked as ``score_batch`` masks)
    fills them in ``batch`` in place, and the loop runs one forward per micro-batch instead of two.

    Args:
        objective: the algorithm's loss (``steer.objective.build_objective``).
        mini_batch_size: responses per optimizer step. micro_batch_size: responses per forward/backward.
        epochs: passes over the rollout (PPO epochs; the paper uses 1).
        generator: drives the shuffle and Clip-Cov's random choice; seed it for reproducibility.
        max_response_len: the constant of Dr.GRPO's ``seq-mean-token-sum-norm``, the generation budget
            (``rollout.max_new_tokens``) as Dr.GRPO defines it; default: T, this batch's longest response.
        partition: this rank's share of every mini-batch (``steer.distributed.partition``); None: all of it. The
            counts are always the whole mini-batch's, and each micro-batch draws from its own generator (seeded
            from ``generator``), so a micro-batch computes the same on whichever rank trains it.
    """
    n, t = batch.response_mask.shape
    fill_old = batch.old_logp is None or batch.old_entropy is None
    if fill_old and not reuses_forward_as_old(
        objective, num_responses=n, mini_batch_size=mini_batch_size, epochs=epochs
    ):
        raise ValueError(
            "batch.old_logp / old_entropy are missing and this update is not on-policy (more than one optimizer step "
            "per rollout, or a normaliser that needs them first): score the batch with score_batch() first"
        )
    if micro_batch_size > mini_batch_size or mini_batch_size % micro_batch_size:
        raise ValueError(
            f"micro_batch_size={micro_batch_size} must divide mini_batch_size={mini_batch_size}: "
            "set micro_batch_size to a divisor of mini_batch_size"
        )
    sums: dict[str, Tensor | float] = defaultdict(float)  # tensors until the end: no device sync per micro-batch
    n_micro = 0
    device = batch.response_mask.device
    omega_all, weights_all, adv_all = (torch.zeros(n, t, device=device) for _ in range(3))
    if fill_old:
        batch.old_logp, batch.old_entropy = torch.zeros(n, t, device=device), torch.zeros(n, t, device=device)
    # H_k for STARE and the entropy controller (neither runs with old_entropy filled by the forward: see above)
    rollout_metrics = objective.start_rollout(batch.old_entropy, batch.response_mask)
    normaliser = objective.new_normaliser()
    normaliser.start(batch)
    if partition is not None:
        normaliser.reduce_max = partition.reduce_max  # the mini-batch maximum over the ranks' shares
    scoring = dict(temperature=temperature, autocast_dtype=autocast_dtype)

    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)  # (N,) CPU generator
        order = order.to(device)  # row indices on the device: selecting rows never waits for it
        for mini_idx in order.split(mini_batch_size):
            mini = batch.select(mini_idx)
            counts = dict(num_tokens=mini.response_mask.sum(), num_seqs=len(mini), max_len=max_response_len or t)
            gens = micro_generators(generator, -(-len(mini) // micro_batch_size))  # (one per micro-batch of the mini)
            if partition is not None:  # this rank's rows; the counts above stay the whole mini-batch's
                own = partition.rows(mini.response_mask.sum(-1), micro_batch_size)  # (N / world_size,)
                per = len(own) // micro_batch_size  # micro-batches per rank
                mini_idx, mini = mini_idx[own], mini.select(own)
                gens = gens[partition.rank * per : (partition.rank + 1) * per]
            normaliser.before_step(
                mini, lambda m=mini: score_batch(model, m, micro_batch_size=micro_batch_size, **scoring)
            )
            for micro_idx, micro_gen in zip(torch.arange(len(mini), device=device).split(micro_batch_size), gens):
                micro = mini.select(micro_idx)
                logp, entropy = forward_logprobs(model, micro, **scoring)  # (N, T) each, with gradient
                if fill_old:  # on-policy: the parameters that sampled the rollout are these, unchanged so far
                    micro.old_logp = logp.detach() * micro.response_mask  # (N, T) as score_batch gives it
                    micro.old_entropy = entropy.detach() * micro.response_mask
                    batch.old_logp[mini_idx[micro_idx]] = micro.old_logp
                    batch.old_entropy[mini_idx[micro_idx]] = micro.old_entropy
                loss, metrics, per_token = objective(
                    logp=logp,
                    old_logp=micro.old_logp,
                    entropy=entropy,
                    old_entropy=micro.old_entropy,
                    advantages=micro.advantages,
                    mask=micro.response_mask,
                    steer_max_abs=normaliser.for_micro(micro, logp, entropy),
                    ref_logp=micro.ref_logp,
                    generator=micro_gen,
                    sampling_logp=micro.sampling_logp,
                    **counts,
                )
                loss.backward()
                if epoch == 0:  # every row once per epoch: keep the first epoch's per-token tensors
                    rows = mini_idx[micro_idx]
                    omega_all[rows] = per_token["omega"].float()
                    weights_all[rows] = per_token["weights"].float()
                    adv_all[rows] = token_advantages(per_token["advantages"], per_token["omega"]).float()
                valid = micro.response_mask.bool()
                metrics["actor/entropy"] = (entropy.detach() * valid).sum() / valid.sum().clamp(min=1)
                for k, v in metrics.items():
                    sums[k] += v.detach() if isinstance(v, Tensor) else v
                n_micro += 1
                sums["_tokens"] += micro.response_mask.sum()  # trained by this process (this rank's share)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
            if torch.isfinite(grad_norm):  # one host sync per optimizer step
                sums["actor/grad_norm"] += grad_norm.detach()
                sums["_steps"] += 1
                optimizer.step()
            else:  # a NaN/inf anywhere in the mini-batch: the step is skipped, never applied, and counted
                sums["_skipped"] += 1
            optimizer.zero_grad(set_to_none=True)

    steps, skipped, tokens = sums.pop("_steps", 0), sums.pop("_skipped", 0), sums.pop("_tokens", 0)
    out = {k: float(v) / n_micro for k, v in sums.items() if k != "actor/grad_norm"}
    out["actor/grad_norm"] = float(sums["actor/grad_norm"]) / steps if steps else float("nan")
    out["actor/optimizer_steps"] = steps
    out["actor/skipped_steps"] = skipped
    out["perf/update_tokens"] = float(tokens)
    out["actor/lr"] = optimizer.param_groups[0]["lr"]
    out.update(rollout_metrics)
    return UpdateResult(out, omega_all, weights_all, adv_all)
