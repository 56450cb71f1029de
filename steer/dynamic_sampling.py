"""DAPO's dynamic sampling and soft overlong punishment (Yu et al. 2025, arXiv 2503.14476), as pure functions.

- **Dynamic sampling**: a group whose G rewards are all equal has advantage 0 under every group baseline and carries no
  gradient; DAPO drops such groups and samples more prompts until the batch holds B groups. ``informative_groups``
  finds them, ``select_groups`` and ``concat_rollouts`` assemble the kept groups of several generation rounds into one
  ``RolloutBatch``; the rounds themselves (generation and scoring) are ``tasks.sampling.sample_and_score``.
- **Overlong shaping** (DAPO's eq. 13): with length budget L_max and cache L_cache,

      R_length(y) = 0                                  if |y| <= L_max - L_cache
                  = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                  = -1                                 if |y| > L_max

  added to the verifier's reward (times ``factor``): ``overlong_penalty``.

Shapes: B prompts, G samples, N = B*G responses, T response tokens. Equations: docs/algorithms.md, section 2b.
"""

from __future__ import annotations

import torch
from torch import Tensor

from steer.rollout.base import RolloutBatch


def overlong_penalty(lengths: Tensor, *, max_length: int, cache: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (N,) in [-factor, 0] for response lengths (N,) (tokens, EOS included)."""
    if not 0 < cache <= max_length:
        raise ValueError(f"the overlong cache must be in (0, max_length={max_length}], got {cache}")
    start = max_length - cache
    lengths = lengths.to(torch.float64)
    penalty = ((start - lengths) / cache).clamp(min=-1.0, max=0.0)  # 0 up to the start, -1 at and past L_max
    return (factor * penalty).to(torch.float32)


def informative_groups(rewards: Tensor, group_index: Tensor, num_groups: int) -> Tensor:
    """(B,) bool: the groups whose rewards are not all equal (reward variance > 0). rewards, group_index: (N,)."""
    r = rewards.to(torch.float64)
    hi = torch.full((num_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(0, group_index, r, "amax")
    lo = torch.full((num_groups,), torch.inf, dtype=torch.float64).scatter_reduce(0, group_index, r, "amin")
    return hi > lo


def select_groups(rollout: RolloutBatch, groups: list[int]) -> RolloutBatch:
    """The responses of ``groups`` (prompt rows of ``rollout``), renumbered 0..len(groups)-1 in that order."""
    rows = torch.cat([torch.nonzero(rollout.group_index == g).flatten() for g in groups])  # (N',)
    new_index = {g: i for i, g in enumerate(groups)}
    return RolloutBatch(
        prompt_ids=[rollout.prompt_ids[g] for g in groups],
        group_index=torch.tensor([new_index[int(g)] for g in rollout.group_index[rows]], dtype=torch.long),
        sample_index=rollout.sample_index[rows],
        response_ids=rollout.response_ids[rows],
        response_mask=rollout.response_mask[rows],
        response_text=[rollout.response_text[int(i)] for i in rows],
        truncated=rollout.truncated[rows],
        sampling_logp=None if rollout.sampling_logp is None else rollout.sampling_logp[rows],
    )


def _pad_to(x: Tensor, t: int, value: float) -> Tensor:
    """(N, T') right-padded with ``value`` to (N, t)."""
    return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)


def concat_rollouts(batches: list[RolloutBatch], *, pad_id: int) -> RolloutBatch:
    """The batches one after the other, prompts renumbered and responses right-padded to the longest T."""
    if len(batches) == 1:
        return batches[0]
    t = max(b.response_ids.shape[1] for b in batches)
    offsets = torch.tensor([0] + [b.num_prompts for b in batches[:-1]]).cumsum(0).tolist()
    has_logp = all(b.sampling_logp is not None for b in batches)
    return RolloutBatch(
        prompt_ids=[ids for b in batches for ids in b.prompt_ids],
        group_index=torch.cat([b.group_index + off for b, off in zip(batches, offsets, strict=True)]),
        sample_index=torch.cat([b.sample_index for b in batches]),
        response_ids=torch.cat([_pad_to(b.response_ids, t, pad_id) for b in batches]),  # (N, T)
        response_mask=torch.cat([_pad_to(b.response_mask, t, 0.0) for b in batches]),  # (N, T)
        response_text=[s for b in batches for s in b.response_text],
        truncated=torch.cat([b.truncated for b in batches]),
        sampling_logp=torch.cat([_pad_to(b.sampling_logp, t, 0.0) for b in batches]) if has_logp else None,
    )
