"""The trainer's view of a rollout: ``PolicyBatch`` (prompt + response rows laid out for teacher-forced scoring)
and ``build_policy_batch``. Shapes: B prompts, G samples, N = B*G responses, P prompt columns, T response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


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
    sampling_logp: Tensor | None = None  # (N, T) under the sampler, for the rollout correction (TIS/MIS)

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
