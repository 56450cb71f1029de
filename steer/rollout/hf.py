"""Backend ``hf``: batched sampling with a KV cache over a transformers causal LM.

The engine shares the training model object: ``update_weights`` only swaps the reference, so what it samples always
reflects the current parameters without a copy. The model is put in eval mode while sampling and restored after.

Sampling follows the usual decode loop (as in ``transformers.generate``): prompts are left-padded with an attention
mask and explicit position ids (``cumsum(mask) - 1``); one prefill forward per prompt fills the cache, which is then
repeated G times (one copy per sample); then one token per step for every live row until each row has sampled EOS or
``max_new_tokens`` is reached. A row that samples EOS leaves the batch (its cache rows are dropped), so later steps
decode only the live rows; its response is padded and masked. Randomness comes only from a ``torch.Generator`` seeded
with the ``seed`` argument, so a call is reproducible on the same device and batch; a prompt's samples do depend on
the rest of the batch (which rows are still live at each step included).

``sampling_logp`` is ``log_softmax(logits / temperature)`` at the sampled token, before top-p truncation: the same
quantity the trainer recomputes for the old policy (verl divides logits by the rollout temperature too), so the two
differ only by numerics and the train/inference mismatch metric compares like with like. ``temperature=0`` means
greedy decoding, with log-probs at temperature 1.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from steer.rollout.base import RolloutBatch, encode_prompts


def left_pad(prompt_ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Left-pad token-id lists: returns ``input_ids`` (N, L) long and ``attention_mask`` (N, L) long."""
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)  # (N, L)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)  # (N, L)
    for i, ids in enumerate(prompt_ids):
        if ids:
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the smallest set of most likely tokens whose probability
    reaches ``top_p`` (always at least the top token); the rest get ``-inf``. (N, V) -> (N, V)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # (N, V): probability of the strictly more likely tokens
    drop_sorted = mass_before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Sample one token per row from ``logits`` (N, V); returns ``tokens`` (N,) long and their log-probs (N,) under
    ``log_softmax(logits / temperature)`` (temperature 1 for greedy ``temperature=0``)."""
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)  # (N,)
        logp = logits.log_softmax(-1)
    else:
        logp = (logits / temperature).log_softmax(-1)  # (N, V)
        probs = top_p_filter(logp, top_p).softmax(-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (N,)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def sample_responses(
    model: Any,
    prompt_ids: list[list[int]],
    *,
    n_samples: int = 1,
    eos_token_id: int | list[int],
    pad_token_id: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sample ``n_samples`` responses per prompt with a KV cache.

    Each prompt is prefilled once and its cache repeated ``n_samples`` times (G-fold less prefill than feeding every
    row its own copy of the prompt); rows leave the decode batch once they sample EOS.

    Args:
        model: a transformers causal LM (any device, any dtype); used as is (the caller sets eval mode).
        prompt_ids: B unpadded token-id lists. n_samples: G rows per prompt, prompt-major (row i * G + j).
        eos_token_id: id or ids that end a response (included in the response as a valid token).
    Returns:
        ``response_ids`` (N, T) long right-padded with ``pad_token_id``, ``response_mask`` (N, T) float,
        ``truncated`` (N,) bool, ``sampling_logp`` (N, T) float (0.0 on padding), all on the CPU; N = B * G.
    """
    device = next(model.parameters()).device
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    input_ids, attention_mask = left_pad(prompt_ids, pad_token_id, device)  # (B, L)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    cache_obj = DynamicCache(config=model.config)
    cache = {_cache_kwarg(model): cache_obj}  # filled in place by every forward
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **cache,
    )
    logits = out.logits[:, -1].repeat_interleave(n_samples, dim=0)  # (N, V)
    if n_samples > 1:
        cache_obj.batch_repeat_interleave(n_samples)  # (B, ...) -> (N, ...) prompt-major
    attention_mask = attention_mask.repeat_interleave(n_samples, dim=0)  # (N, L)
    next_position = (position_ids[:, -1:] + 1).repeat_interleave(n_samples, dim=0)  # (N, 1)
    n = attention_mask.shape[0]
    response_ids = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)  # (N, T_max)
    sampling_logp = torch.zeros(n, max_new_tokens, device=device)  # (N, T_max)
    response_mask = torch.zeros(n, max_new_tokens, device=device)  # (N, T_max)
    live = torch.arange(n, device=device)  # (n_live,) rows still decoding; finished rows leave the batch
    width = 0
    for step in range(max_new_tokens):
        token, logp = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator)  # (n_live,)
        response_ids[live, step] = token
        sampling_logp[live, step] = logp.float()
        response_mask[live, step] = 1.0
        width = step + 1
        going = ~torch.isin(token, eos)  # (n_live,)
        if step == max_new_tokens - 1:
            break
        keep = going.nonzero().squeeze(1)  # one host sync per step (as the all-done check is)
        if len(keep) == 0:
            break
        if len(keep) < len(live):  # drop the finished rows from the batch and the cache
            live, token = live[keep], token[keep]
            cache_obj.batch_select_indices(keep)
            attention_mask, next_position = attention_mask[keep], next_position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(live), 1)], dim=-1)  # (n_live, L+s+1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            use_cache=True,
            **cache,
        )
        logits = out.logits[:, -1]  # (n_live, V)
        next_position = next_position + 1
    truncated = torch.zeros(n, dtype=torch.bool, device=device)
    if width == max_new_tokens:  # rows live at the last step that did not sample EOS there
        truncated[live[going]] = True
    return (
        response_ids[:, :width].cpu(),  # (N, T)
        response_mask[:, :width].cpu(),
        truncated.cpu(),
        sampling_logp[:, :width].cpu(),
    )


class HFRolloutEngine:
    """``RolloutEngine`` over a transformers model held in this process (the training model itself).

    Args:
        model: the causal LM to sample from (shared with the trainer, not copied).
        tokenizer: its tokenizer; needs ``eos_token_id``; the pad id falls back to EOS.
        add_special_tokens: passed to the tokenizer when encoding prompts (BOS for tokenizers that add one).
    """

    shares_model = True  # samples from the training model itself: nothing to sync after an update

    def __init__(self, model: Any, tokenizer: Any, *, add_special_tokens: bool = True):
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id: set tokenizer.eos_token before sampling")
        self.model = model
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.eos_token_id: int | list[int] = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = tokenizer.eos_token_id if pad is None else pad

    def generate(
        self,
        prompts: list[str],
        *,
        n_samples: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int,
        seed: int,
    ) -> RolloutBatch:
        """Sample ``n_samples`` responses per prompt; see the module docstring for the sampler's semantics."""
        prompt_ids = encode_prompts(
            self.tokenizer,
            prompts,
            n_samples=n_samples,
            max_new_tokens=max_new_tokens,
            add_special_tokens=self.add_special_tokens,
        )
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(int(seed))
        was_training = self.model.training
        self.model.eval()
        try:
            response_ids, response_mask, truncated, sampling_logp = sample_responses(
                self.model,
                prompt_ids,
                n_samples=n_samples,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                generator=generator,
            )
        finally:
            self.model.train(was_training)
        lengths = response_mask.sum(-1).long().tolist()
        text = self.tokenizer.batch_decode(
            [r[:k] for r, k in zip(response_ids.tolist(), lengths)], skip_special_tokens=True
        )
        b = len(prompts)
        return RolloutBatch(
            prompt_ids=prompt_ids,
            group_index=torch.arange(b).repeat_interleave(n_samples),  # (N,)
            sample_index=torch.arange(n_samples).repeat(b),  # (N,)
            response_ids=response_ids,
            response_mask=response_mask,
            response_text=text,
            truncated=truncated,
            sampling_logp=sampling_logp,
        )

    def update_weights(self, model: Any) -> None:
        """Point the engine at ``model``; no copy, since the engine samples from the training model itself."""
        self.model = model

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""


def _eos_ids(model: Any, tokenizer: Any) -> int | list[int]:
    """The tokenizer's EOS plus any extra EOS ids of the model's generation config (e.g. <|im_end|>, <|eot_id|>)."""
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    for i in [extra] if isinstance(extra, int) else list(extra or []):
        if i not in ids:
            ids.append(i)
    return ids[0] if len(ids) == 1 else ids


def _cache_kwarg(model: Any) -> str:
    """The forward keyword for the KV cache: ``cache`` in transformers >= 5.2x, ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it through
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
