"""One trainer rank: its shard of the policy (FSDP2), its optimizer, and the same ``policy_update`` loop as one
process, on its share of every mini-batch. Plain Python: ``steer.distributed.group`` runs it as a Ray actor, and a
torchrun-launched script could run it as well.

Every rank receives the whole rollout layout (``PolicyBatch``, CPU) and the update's settings; the old log-probs,
when the update needs them scored first, are scored on the rank's contiguous N / world_size rows and all-gathered,
so every rank holds the rollout's old log-probs (the ``rollout`` normaliser reads all of them).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from steer.algorithms import AlgorithmConfig
from steer.batch import PolicyBatch
from steer.distributed.fsdp import (
    full_state_dict,
    load_full_optimizer_state,
    load_full_state_dict,
    load_sharded,
    save_sharded,
    shard_model,
)
from steer.distributed.partition import Partition
from steer.lora import apply_lora, merged_state_dict
from steer.objective import build_objective
from steer.scoring import score_batch
from steer.update import policy_update, reuses_forward_as_old


def _reduce_max(x: torch.Tensor) -> torch.Tensor:
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return y


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order: (N / W, T) -> (N, T)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class RankTrainer:
    """Rank ``rank`` of ``world_size`` (``trainer.*`` settings in ``options``: backend, timeout, bf16, offload)."""

    def __init__(self, rank: int, world_size: int, *, num_threads: int = 1):
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(max(num_threads, 1))
        self.model: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.objective = None
        self.partition: Partition | None = None
        self.device = torch.device("cpu")
        self.lora: dict | None = None

    # --- the process group -------------------------------------------------------------------------------------
    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the process group's store."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return socket.gethostbyname(socket.gethostname()), port

    def init_group(self, addr: str, port: int, *, backend: str, timeout_s: float, device: str = "cpu") -> int:
        """Join the process group (gloo on CPU, NCCL on GPU); a collective that waits longer than ``timeout_s``
        raises on this rank instead of hanging."""
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))
        dist.init_process_group(
            backend, rank=self.rank, world_size=self.world_size, timeout=timedelta(seconds=timeout_s)
        )
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        return self.rank

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # --- the policy ----------------------------------------------------------------------------------------------
    def setup(
        self,
        model: Any,
        algorithm: AlgorithmConfig,
        *,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        balance: bool = False,
        bf16: bool = False,
        cpu_offload: bool = False,
        gradient_checkpointing: bool = False,
        objective_state: dict | None = None,
        lora: dict | None = None,
    ) -> int:
        """Shard ``model`` (a module, or a folder ``load_policy`` reads), with LoRA adapters when ``lora`` gives
        ``r``, ``alpha``, ``dropout``, ``target_modules`` (``steer.lora``); build AdamW over the trainable
        parameters and the objective. Returns the parameter count."""
        if isinstance(model, str | os.PathLike):
            from steer.models.loading import load_policy

            model, _ = load_policy(str(model), dtype=torch.float32, device="cpu")
        model = model.to(self.device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.lora = lora if lora and lora.get("r") else None
        if self.lora:
            model = apply_lora(model, **self.lora)
        model.train()
        n_params = sum(p.numel() for p in model.parameters())
        self.model = shard_model(model, bf16=bf16, cpu_offload=cpu_offload)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, betas=betas)
        self.objective = build_objective(algorithm)
        self.objective.load_state_dict(objective_state or {})
        self.partition = Partition(self.rank, self.world_size, balance=balance, reduce_max=_reduce_max)
        return n_params

    def full_state_dict(self, merged: bool = True) -> dict[str, torch.Tensor]:
        """The unsharded weights on rank 0 (empty dict on the others): every rank must be called. With LoRA and
        ``merged``, the base model's weights with the adapters merged in (what a sampler loads)."""
        state = full_state_dict(self.model)
        if state and self.lora and merged:
            return merged_state_dict(state, r=self.lora["r"], alpha=self.lora["alpha"])
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_full_state_dict(self.model, state)

    def save_sharded(self, path: str) -> None:
        """Write this rank's shard of the weights and AdamW state to the folder ``path`` (a collective)."""
        save_sharded(self.model, self.optimizer, path)

    def load_sharded(self, path: str) -> None:
        """Read the weights and AdamW state of ``save_sharded``'s folder, saved at any world size (a collective)."""
        load_sharded(self.model, self.optimizer, path)

    def load_optimizer_state(self, state: dict) -> None:
        load_full_optimizer_state(self.model, self.optimizer, state)

    # --- one rollout's update -------------------------------------------------------------------------------------
    def update(
        self,
        batch: PolicyBatch,
        seed: int,
        *,
        mini_batch_size: int,
        micro_batch_size: int,
        epochs: int,
        temperature: float,
        max_grad_norm: float,
        max_response_len: int | None,
    ) -> dict[str, Any]:
        """``policy_update`` on this rank's share; returns its metrics and the per-token tensors of its rows
        (zeros on the other ranks' rows: the controller sums them), and the old log-probs."""
        batch = batch.to(self.device)
        n = len(batch)
        scored = not reuses_forward_as_old(
            self.objective, num_responses=n, mini_batch_size=mini_batch_size, epochs=epochs
        )
        if scored:
            if n % self.world_size:
                raise ValueError(f"{n} responses do not split over {self.world_size} ranks")
            per = n // self.world_size
            mine = batch.select(torch.arange(self.rank * per, (self.rank + 1) * per, device=self.device))
            logp, ent = score_batch(self.model, mine, micro_batch_size=micro_batch_size, temperature=temperature)
            batch.old_logp, batch.old_entropy = _gather_rows(logp), _gather_rows(ent)  # (N, T) each
        result = policy_update(
            self.model,
            self.optimizer,
            batch,
            self.objective,
            mini_batch_size=mini_batch_size,
            micro_batch_size=micro_batch_size,
            epochs=epochs,
            temperature=temperature,
            max_grad_norm=max_grad_norm,
            generator=torch.Generator().manual_seed(seed),
            max_response_len=max_response_len,
            partition=self.partition,
        )
        cpu = {k: v.cpu() for k, v in dict(omega=result.omega, weights=result.weights).items()}
        return dict(
            rank=self.rank,
            metrics=result.metrics,
            token_advantages=result.token_advantages.cpu(),
            old_logp=batch.old_logp.cpu(),
            old_entropy=batch.old_entropy.cpu(),
            old_logp_is_full=scored,
            objective_state=self.objective.state_dict(),
            **cpu,
        )
