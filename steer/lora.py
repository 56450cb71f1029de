"""LoRA adapters on the policy (``peft``) and the merged weights the rollout engine receives.

``apply_lora(model, r=..., alpha=..., dropout=..., target_modules=...)`` wraps a causal LM in a peft ``PeftModel``
whose only trainable parameters are the adapters' A (r x in) and B (out x r); B starts at zero, so the wrapped policy
computes exactly what the base policy does until the first step (Hu et al. 2021, "LoRA"). ``merged_state_dict``
turns a LoRA model's state dict (local, or the unsharded one gathered from FSDP ranks) into plain weights under the
base model's names, W + (alpha / r) B A, without changing the model: what a sampler that knows nothing of adapters
(the flow's sampling copy, vLLM) loads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PREFIX = "base_model.model."


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    seed: int = 0,
) -> torch.nn.Module:
    """``model`` with LoRA adapters of rank ``r`` on the linear layers named in ``target_modules``; A is drawn from
    a generator seeded with ``seed`` (the global RNG is left as it was), so every rank builds the same adapters."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, cfg)


def is_lora_state(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_A." in k for k in state)


def merged_state_dict(state: dict[str, torch.Tensor], *, r: int, alpha: float) -> dict[str, torch.Tensor]:
    """A peft LoRA state dict -> the base model's state dict with W + (alpha / r) B A in place of every adapted W;
    a state dict without adapters is returned as it is. Shapes: A (r, in), B (out, r), W (out, in)."""
    if not is_lora_state(state):
        return state
    scale = alpha / r
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix(PREFIX).replace(".base_layer.", ".")
        if key.endswith(".base_layer.weight"):
            stem = key.removesuffix(".base_layer.weight")
            a, b = state[f"{stem}.lora_A.default.weight"], state[f"{stem}.lora_B.default.weight"]
            value = value + scale * (b.float() @ a.float()).to(value.dtype)  # (out, r) @ (r, in) -> (out, in)
        out[name] = value
    return out
