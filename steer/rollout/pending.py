"""The one-step-off schedule's state across a checkpoint: the rollout sampled ahead, as flat tensors.

With ``rollout.one_step_off`` the engine samples rollout k+1 while the trainer updates on rollout k, with the weights
before that update. When the run checkpoints after step k, rollout k+1 already exists and was sampled with weights
the checkpoint does not hold (it holds the updated ones), so regenerating it after a resume would sample from the
wrong policy. The checkpoint therefore stores the rollout itself (a few bytes per token, against a second copy of
the weights) and the resumed run trains on exactly the batch the unbroken run trained on.

``rollout_to_tensors`` / ``rollout_from_tensors`` are exact inverses (the text goes as UTF-8 bytes, the ragged
prompts as a flat list with lengths). Pure torch.
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import Tensor

from steer.rollout.base import RolloutBatch


def rollout_to_tensors(batch: RolloutBatch, step: int) -> dict[str, Tensor]:
    """``batch`` (the rollout of step ``step``) as a flat dict of CPU tensors for a safetensors file."""
    text = [t.encode() for t in batch.response_text]
    out = {
        "step": torch.tensor(step, dtype=torch.long),
        "prompt_ids": torch.tensor([i for ids in batch.prompt_ids for i in ids], dtype=torch.long),  # (sum P_b,)
        "prompt_lengths": torch.tensor([len(ids) for ids in batch.prompt_ids], dtype=torch.long),  # (B,)
        "group_index": batch.group_index,  # (N,)
        "sample_index": batch.sample_index,  # (N,)
        "response_ids": batch.response_ids,  # (N, T)
        "response_mask": batch.response_mask,  # (N, T)
        "truncated": batch.truncated.to(torch.uint8),  # (N,) safetensors has no bool
        "text_bytes": torch.tensor(list(b"".join(text)), dtype=torch.uint8),  # (sum bytes,)
        "text_lengths": torch.tensor([len(t) for t in text], dtype=torch.long),  # (N,)
    }
    if batch.sampling_logp is not None:
        out["sampling_logp"] = batch.sampling_logp  # (N, T)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def rollout_from_tensors(tensors: dict[str, Tensor]) -> tuple[int, RolloutBatch]:
    """``(step, batch)`` back from ``rollout_to_tensors``."""
    flat, lengths = tensors["prompt_ids"].tolist(), tensors["prompt_lengths"].tolist()
    starts = [0, *accumulate(lengths)]
    raw = bytes(tensors["text_bytes"].tolist())
    text_lengths = tensors["text_lengths"].tolist()
    text_starts = [0, *accumulate(text_lengths)]
    batch = RolloutBatch(
        prompt_ids=[flat[s : s + n] for s, n in zip(starts, lengths)],
        group_index=tensors["group_index"],
        sample_index=tensors["sample_index"],
        response_ids=tensors["response_ids"],
        response_mask=tensors["response_mask"],
        response_text=[raw[s : s + n].decode() for s, n in zip(text_starts, text_lengths)],
        truncated=tensors["truncated"].bool(),
        sampling_logp=tensors.get("sampling_logp"),
    )
    return int(tensors["step"]), batch
