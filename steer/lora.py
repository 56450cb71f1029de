"""LoRA adapters on the policy (``peft``) and the merged weights the rollout engine receives.

``apply_lora(model, r=..., alpha=..., dropout=..., target_modules=...)`` wraps a causal LM in a peft ``PeftModel``
whose only trainable parameters are the adapters' A (r x in) and B (out x r); B starts at zero, so the wrapped policy
computes exactly what the base policy does until the first step (Hu et al. 2021, "LoRA"). ``merged_state_dict``
turns a LoRA model's state dict (local, or the unsharded one gathered from FSDP ranks) into plain weights under the
base model's names, W + (alpha / r) B A, without changing the model: what a sampler that knows nothing of adapters
(the flow's sampling copy, vLLM) loads. ``sampler_state_dict`` and ``merged_model`` give the same for a live model,
and ``adapter_state`` the adapters alone: what a LoRA run's checkpoint stores to resume exactly (the base weights
never change, so they are read again from the model source).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

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
        wrapped = get_peft_model(model, cfg)
    checkpointed = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.2x; the old name before
    if checkpointed is None:
        checkpointed = getattr(model, "is_gradient_checkpointing", False)
    if checkpointed:
        wrapped.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad-tracked input
    return wrapped


def is_lora_model(model: Any) -> bool:
    """Whether ``model`` is a peft model with LoRA adapters (``apply_lora``'s result)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def lora_scale(model: Any) -> tuple[int, float]:
    """``(r, alpha)`` of a LoRA model's default adapter."""
    cfg = model.peft_config["default"]
    return cfg.r, cfg.lora_alpha


def adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """A LoRA model's adapter weights (A and B of every adapted layer), detached on the CPU, under their state-dict
    names: everything a LoRA run trains."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}


def sampler_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """What a sampler that knows nothing of adapters loads: the merged weights of a LoRA model under the base
    model's names, else the model's own state dict."""
    if not is_lora_model(model):
        return model.state_dict()
    r, alpha = lora_scale(model)
    return merged_state_dict(model.state_dict(), r=r, alpha=alpha)


def merged_model(model: Any) -> Any:
    """A plain Hugging Face model with the adapters merged in (a copy: ``model`` keeps training); ``model`` itself
    when it has no adapters."""
    if not is_lora_model(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


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
