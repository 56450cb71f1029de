"""Teacher-forced scoring of a ``PolicyBatch``: log pi(a_t | s_t) and H(s_t) of every response token.

``forward_logprobs`` is one forward pass (with gradient if enabled), ``score_batch`` the no-grad pass over a whole
batch in micro-batches (the rollout policy's ``old_logp``/``old_entropy``, the mini-batch normaliser's Omega).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from steer.batch import PolicyBatch
from steer.logprobs import token_logprobs_and_entropy


def forward_logprobs(
    model: torch.nn.Module, batch: PolicyBatch, *, temperature: float = 1.0, autocast_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """log pi(a_t | s_t) and H(s_t) of every response token, (N, T) each, with gradient if enabled."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P + T)
    p, t = batch.prompt_len, batch.response_mask.shape[1]
    if p < 1:
        raise ValueError("a PolicyBatch needs at least one prompt column: the first response token has no state")
    # exactly the T columns P - 1 .. P + T - 2 that predict response tokens: the logits come out contiguous, so the
    # chunked log-softmax reads them in place (asking for T + 1 and slicing one off forced a full copy)
    keep = torch.arange(p - 1, p - 1 + t, device=batch.input_ids.device)  # (T,)
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
            logits_to_keep=keep,
        )
    logits = out.logits  # (N, T, V) contiguous: row t (column P + t - 1) predicts response token t
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
    """No-grad log-probs and entropies of the whole batch, micro-batch by micro-batch: (N, T), (N, T).

    Scored in eval mode (no dropout), as the sampler saw the policy; the model's train/eval mode is restored after.
    """
    logps, ents = [], []
    was_training = model.training
    model.eval()
    try:
        for idx in torch.arange(len(batch)).split(micro_batch_size):
            sub = batch.select(idx)
            logp, ent = forward_logprobs(model, sub, temperature=temperature, autocast_dtype=autocast_dtype)
            logps.append(logp)
            ents.append(ent)
    finally:
        model.train(was_training)
    mask = batch.response_mask
    return torch.cat(logps) * mask, torch.cat(ents) * mask  # (N, T), zeros on padding
