"""The live objects of a training run, built from its config: policy, optimizer, rollout engine, data order.

Kept out of Prefect results on purpose (they are models, not pointers). Everything random derives its seed from
``(run seed, purpose, step)`` through ``derive_seed``, so a resumed run replays exactly what an unbroken one does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steer import choices
from steer.checkpoint import latest_good_checkpoint, load_checkpoint, load_checkpoint_tensors, sharded_path
from steer.config import RunConfig
from steer.data import Problem
from steer.lora import apply_lora
from steer.objective import Objective, build_objective
from steer.registry import Registry
from steer.resume import ResumeCheck, check_resume_dir
from steer.rollout.base import RolloutBatch, RolloutEngine, make_rollout_engine
from steer.rollout.pending import rollout_from_tensors

PENDING = "pending_rollout"
"""The checkpoint's tensor group holding a one-step-off run's rollout sampled ahead (``steer.rollout.pending``)."""

TRAINER_BACKENDS: Registry = Registry("trainer backend", choices.TRAINER_BACKENDS)
"""``trainer.backend`` -> ``(config, model_source, model, optimizer, objective_state, shards) -> trainer ranks or
None``; ``shards`` is the resumed checkpoint's ``shards/`` folder when trainer ranks saved it (else None)."""


@TRAINER_BACKENDS.register("local")
def _local_trainer(config, source, model, optimizer, objective_state, shards):
    return None  # the update runs on ``Runtime.model`` in this process


@TRAINER_BACKENDS.register("ray")
def _ray_trainer(config, source, model, optimizer, objective_state, shards):
    """``trainer.world_size`` FSDP2 ranks (``steer.distributed.group.RankGroup``) holding the policy read from
    ``source``; on a resume, the weights and optimizer state of a checkpoint's ``shards`` (saved by ranks, at any
    world size), or the optimizer state a one-process checkpoint restored into ``optimizer``. From here the training
    state lives in the ranks; ``model`` stays the flow's sampling copy. With LoRA, ``source`` is the base model and
    the ranks take ``model``'s adapters."""
    from steer.distributed.fsdp import full_optimizer_state
    from steer.distributed.group import RankGroup

    tr, lora = config.trainer, lora_options(config)
    group = RankGroup(
        tr.world_size,
        address=tr.ray_address,
        use_gpu=resolve_device(config.model.device).type == "cuda",
        timeout_s=tr.collective_timeout_s,
        num_threads=tr.threads_per_rank,
    )
    try:
        o = config.optim
        group.setup(
            source,
            config.algorithm,
            lr=o.lr,
            weight_decay=o.weight_decay,
            betas=o.betas,
            balance=tr.balance_tokens,
            bf16=tr.mixed_precision == "bf16",
            cpu_offload=tr.cpu_offload,
            gradient_checkpointing=config.model.gradient_checkpointing,
            objective_state=objective_state,
            lora=lora,
        )
        if shards is not None:  # resumed from ranks' shards: each rank reads its part, resharded to this world size
            group.call("load_sharded", str(Path(shards).resolve()))
        else:
            if lora:  # the adapters of a one-process resume (a fresh run's equal the ranks' own: same seed)
                group.call("load_state_dict", model.state_dict())
            if optimizer.state:  # resumed from one process: its AdamW state, by parameter name
                group.call("load_optimizer_state", full_optimizer_state(model, optimizer))
    except BaseException:
        group.close()
        raise
    return group


def lora_options(config: RunConfig) -> dict[str, Any] | None:
    """``steer.lora.apply_lora``'s keywords for ``model.lora`` (the adapters' init seeded from the run seed, the same
    on every rank and on a resume), None when LoRA is off."""
    lora = config.model.lora
    if not lora.r:
        return None
    return {
        "r": lora.r,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "target_modules": list(lora.target_modules),
        "seed": derive_seed(config.seed, "lora", 0),
    }


def derive_seed(seed: int, purpose: str, step: int) -> int:
    """A 63-bit seed from (run seed, purpose, step): independent streams that do not depend on execution order."""
    digest = hashlib.sha256(f"{seed}/{purpose}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def cache_dir() -> Path:
    """Where built policies are cached: $STEER_CACHE_DIR, else $XDG_CACHE_HOME/steer, else ~/.cache/steer."""
    if os.environ.get("STEER_CACHE_DIR"):
        return Path(os.environ["STEER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steer"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class DataOrder:
    """Which training problems each step sees: a seeded permutation per pass over the data, so step s's batch is a
    pure function of (seed, s) and resuming needs no saved loader state."""

    problems: list[Problem]
    batch_size: int
    seed: int
    _orders: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False)

    def batch(self, step: int) -> list[Problem]:
        n = len(self.problems)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, pos = divmod(k, n)
            out.append(self.problems[self._order(epoch)[pos]])
        return out

    def _order(self, epoch: int) -> list[int]:
        """The seeded permutation of pass ``epoch``, drawn once and kept while steps read from it (a step spans at
        most two passes, so older ones are dropped)."""
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "data", epoch))
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = torch.randperm(len(self.problems), generator=g).tolist()
        return self._orders[epoch]


def sync_options(config: RunConfig) -> dict[str, Any]:
    """The weight-sync options of a backend that holds its own copy of the weights (vllm); none for hf, which
    samples from the trained model itself."""
    r = config.rollout
    if r.backend == "hf":
        return {}
    return {
        "weight_sync": r.weight_sync,
        "probe_tokens": r.sync_probe_tokens,
        "probe_tolerance": r.sync_probe_tolerance,
    }


@dataclass
class Runtime:
    """Model, tokenizer, optimizer and rollout engine of one run, and the step to start from."""

    config: RunConfig
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    engine: RolloutEngine
    device: torch.device
    start_step: int = 0
    extra: dict = field(default_factory=dict)
    objective: Objective | None = None  # the algorithm's loss, built once (open_runtime)
    resume: ResumeCheck = field(default_factory=ResumeCheck)  # safe config changes against the checkpoint's
    ranks: Any = None  # trainer.backend ray: the RankGroup that holds the training state (None: it is model here)
    pending: RolloutBatch | None = None
    """rollout.one_step_off: the rollout of step ``start_step`` sampled ahead, restored from the checkpoint."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.config.model.autocast_bf16 else None

    def save_shards(self, path: Path) -> None:
        """With trainer ranks: each writes its shard of the weights and optimizer state to ``path`` (the checkpoint's
        ``shards/``; ``steer.checkpoint.save_checkpoint(shards=...)``)."""
        self.ranks.call("save_sharded", str(Path(path).resolve()))  # Ray workers have their own working directory

    def close(self) -> None:
        try:
            self.engine.close()
        finally:
            if self.ranks is not None:
                self.ranks.close()  # actors, placement group, and the Ray this run started


def open_runtime(config: RunConfig, policy_path: str) -> Runtime:
    """Load the policy, build the optimizer and engine, and restore the latest checkpoint of ``output_dir`` if any.

    A damaged checkpoint (size or hash) is skipped with a warning for the newest intact one, and a config that
    changes what the checkpoint's run computes is refused before anything loads (``steer.resume``)."""
    from steer.models.loading import load_policy

    if config.model.num_threads:
        torch.set_num_threads(config.model.num_threads)
    device = resolve_device(config.model.device)
    out = Path(config.output_dir)
    ckpt = latest_good_checkpoint(out / "checkpoints")
    resume = check_resume_dir(config, ckpt)
    lora = lora_options(config)
    # LoRA trains adapters on frozen base weights: those always come from the model source, the adapters from the
    # checkpoint (load_checkpoint checks that the two give the checkpoint's merged weights)
    source = policy_path if lora or ckpt is None else str(ckpt)
    model, tokenizer = load_policy(source, dtype=torch.float32, device=device)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora:
        model = apply_lora(model, **lora)
    model.train()
    o = config.optim
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    start, extra = 0, {}
    shards = sharded_path(ckpt) if ckpt is not None else None
    on_ranks = config.trainer.backend != "local"
    if ckpt is not None:  # verified just above; ranks read a sharded optimizer state themselves
        start, extra = load_checkpoint(
            ckpt, model, optimizer, {}, verify=False, load_optimizer=not (shards and on_ranks)
        )
    objective = build_objective(config.algorithm)
    objective.load_state_dict(extra.get("objective", {}))  # the adaptive entropy coefficient of a resumed run
    ranks = TRAINER_BACKENDS.get(config.trainer.backend)(
        config, source, model, optimizer, extra.get("objective"), shards
    )
    try:
        engine = make_rollout_engine(
            config.rollout.backend,
            model=model,
            tokenizer=tokenizer,
            **config.rollout.engine_options(),
            **sync_options(config),
        )
    except BaseException:
        if ranks is not None:
            ranks.close()
        raise
    rt = Runtime(config, model, tokenizer, optimizer, engine, device, start, extra, objective, resume, ranks)
    saved = load_checkpoint_tensors(ckpt, PENDING) if ckpt is not None and config.rollout.one_step_off else None
    if saved is not None:
        step, rt.pending = rollout_from_tensors(saved)
        if step != start:
            rt.close()
            raise ValueError(f"{ckpt}: its pending rollout is for step {step}, the run resumes at {start}")
    return rt
