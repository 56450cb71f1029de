"""FSDP2 wrapping of a Hugging Face causal LM and its full (unsharded) state dict, for trainer ranks.

``shard_model`` applies ``torch.distributed.fsdp.fully_shard`` to every decoder layer (the classes the model names
in ``_no_split_modules``) and then to the root, so one layer's parameters are gathered at a time. Gradients are
*summed* over ranks (``set_gradient_divide_factor(1.0)``), not averaged: each rank's loss is already scaled by the
whole mini-batch's counts (``steer.distributed.partition``), so FSDP's default mean would divide by the world size
twice. ``set_force_sum_reduction_for_comms`` makes the reduction a plain SUM, which gloo supports (it has no
PREMUL_SUM). The setting is per sharded unit: every layer gets it, not only the root (the root's covers only its own
parameters; missing it averaged the layers' gradients). Needs an initialised default process group.
"""

from __future__ import annotations

import os

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard


def shard_model(model: torch.nn.Module, *, bf16: bool = False, cpu_offload: bool = False) -> torch.nn.Module:
    """Shard ``model`` in place over the default process group; bf16 parameters in forward/backward with fp32
    gradient reduction when ``bf16`` (GPUs), parameters and optimizer state on the CPU when ``cpu_offload``."""
    kw = {}
    if bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kw["offload_policy"] = CPUOffloadPolicy()
    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layer_names:
            fully_shard(module, **kw)
    fully_shard(model, **kw)
    for module in model.modules():  # every sharded unit has its own setting, the root's covers only its own
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum: the loss carries the global counts already
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM), no division
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded parameters on the CPU, on rank 0 (empty elsewhere). A collective: every rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load unsharded parameters (given on every rank) into a sharded model."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, unsharded, on the CPU (rank 0 for a sharded model; a plain
    model works too, without a process group): the format ``load_full_optimizer_state`` reads at any world size."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load ``full_optimizer_state``'s output (given on every rank) into ``optimizer`` of a sharded or plain model."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | os.PathLike) -> None:
    """Every rank writes its own shard of the weights and of the optimizer state to the folder ``path``
    (``torch.distributed.checkpoint``; a collective: every rank calls it, nothing is gathered)."""
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: str | os.PathLike, *, weights: bool = True
) -> None:
    """Read ``save_sharded``'s folder into a sharded model on any world size (every rank calls it) or into a plain
    model in one process without a process group: ``torch.distributed.checkpoint`` reshards. ``weights=False``
    reads the optimizer state only."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the layout to fill (initialises AdamW's)
    if weights:
        state["model"] = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=str(path))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if weights:
        set_model_state_dict(model, state["model"])
