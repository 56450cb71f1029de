"""``EstimatorStudyConfig``: the typed settings of the estimator study (``flows/estimator_study.py``,
``steer study estimator``), shown by Prefect as a form. No Prefect or MLflow here.

The study trains (or reuses) a source run of ``preset`` + ``overrides`` in ``source_dir`` (default
``<output_dir>/run``), and measures the estimators at each of ``stages``, on ``batches`` rollout batches, with each
optimizer cell of ``optimizers``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steer.choices import OptimizerName
from steer.config import ConfigError, RunConfig, load_config, merge, nest
from steer.runtime import derive_seed
from steer.studies.estimator import cell_label

STAGE_NAMES = ("start", "middle", "end")
"""start: the initial policy (before any update); middle: the checkpoint nearest steps / 2; end: the last one."""


class OptimizerCell(BaseModel):
    """One optimizer and learning rate: a fresh optimizer takes exactly one step from the stage's policy."""

    model_config = ConfigDict(extra="forbid")

    name: OptimizerName = Field(
        description="sgd (torch.optim.SGD, no momentum: the step is -lr * grad, Theorem 1's setting) or adamw "
        "(weight decay 0, fresh state: the first step is about -lr * sign(grad), what training takes)."
    )
    lr: float = Field(ge=0, description="Step size; no gradient clipping, so lr is the step. 0 is a control.")

    @property
    def label(self) -> str:
        return cell_label(self.name, self.lr)


# Calibrated on the tiny policy (32 prompts x 8 samples; ``nonlinearity`` = deviation of the realized change per unit
# lr from that of a reference step at SGD 1e-4 / AdamW 1e-7), at the start: SGD 1e-3: 0.02
# (first-order), 1e-2: 0.22 (the edge), 1e-1: 0.97 (beyond); AdamW 1e-6: 0.01, 1e-4 (the tiny preset's training
# lr): 0.39, 1e-3: 0.98. After 20 and 50 steps the smallest cells stay first-order (SGD 1e-3: 0.025 and 0.015,
# AdamW 1e-6: 0.006 and 0.009), and SGD 1e-2 / AdamW 1e-4 are 0.17 / 0.29-0.32.
DEFAULT_OPTIMIZERS = [
    OptimizerCell(name="sgd", lr=1e-3),
    OptimizerCell(name="sgd", lr=1e-2),
    OptimizerCell(name="sgd", lr=1e-1),
    OptimizerCell(name="adamw", lr=1e-6),
    OptimizerCell(name="adamw", lr=1e-4),
    OptimizerCell(name="adamw", lr=1e-3),
]


class EstimatorStudyConfig(BaseModel):
    """How well Omega predicts the entropy change of one real optimizer step, at several stages of a run."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("tiny", description="Preset of the source run (steer/presets/*.yaml) or a .yaml path.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted settings of the source run, e.g. {'steps': 20, 'optim.lr': 1e-4}. Its algorithm's clip "
        "range and aggregation also define the measured step (without token weights or extra terms).",
    )
    output_dir: str = Field(
        "runs/estimator-study",
        description="Everything the study writes: the source run in <output_dir>/run (unless source_dir says "
        "otherwise; reused when finished), tokens.parquet, estimator_table.csv/.md, estimator_summary.csv/.md, "
        "cells.csv, scatter PNGs and, without MLFLOW_TRACKING_URI, the MLflow store mlflow.db holding the study run "
        "and the source run.",
    )
    source_dir: str | None = Field(
        None,
        description="Folder of the source run; None: <output_dir>/run. Point it at a finished run (e.g. another "
        "study's <output_dir>/run) to measure that run's checkpoints without training again: a run with a checkpoint "
        "of its last step is reused as it is, and its MLflow run stays in the store that holds it.",
    )
    stages: list[str | int] = Field(
        default_factory=lambda: list(STAGE_NAMES),
        min_length=1,
        description="Policies to measure: start (initial policy), middle (checkpoint nearest steps/2), end (last "
        "checkpoint), or a checkpoint step (an integer; 0 is the initial policy).",
    )
    optimizers: list[OptimizerCell] = Field(
        default_factory=lambda: [c.model_copy() for c in DEFAULT_OPTIMIZERS],
        min_length=1,
        description="Optimizer cells, each one step from a fresh copy of the stage's policy. Default: SGD 1e-3/1e-2/"
        "1e-1 and AdamW 1e-6/1e-4/1e-3, from within the first-order regime to clearly beyond it on the tiny policy.",
    )
    prompts: int | None = Field(
        None, gt=0, description="B of the study batch (G comes from the source run); None: its prompts_per_step."
    )
    batches: int = Field(
        3,
        ge=1,
        description="Independent rollout batches per stage (batch k: the k-th prompt batch of the study's order and "
        "its own rollout seed), each stepped by every cell; the summary gives the mean over batches and a 95% "
        "t-interval. Default 3: one batch is noisy (at step 20 of the tiny run, first_order's Spearman was about 0 on "
        "one 256-response batch and 0.37 on another), and every batch costs a stage's full set of steps.",
    )
    seed: int = Field(0, description="Seed of the study's prompts and rollouts (derived per stage and batch).")
    experiment: str = Field("steer-estimator-study", description="MLflow experiment of the study run.")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[str | int]) -> list[str | int]:
        out: list[str | int] = []
        for s in v:
            if isinstance(s, str) and s.strip().isdigit():
                s = int(s)
            if (isinstance(s, int) and s < 0) or (isinstance(s, str) and s not in STAGE_NAMES):
                raise ValueError(
                    f"stage {s!r} is not one of: {', '.join(STAGE_NAMES)}, or a checkpoint step (an integer >= 0)"
                )
            out.append(s)
        if len(set(out)) != len(out):
            raise ValueError(f"stages {out} repeat a stage: list each once")
        return out

    @model_validator(mode="after")
    def _cells(self) -> EstimatorStudyConfig:
        labels = [c.label for c in self.optimizers]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"optimizers repeat a cell: {', '.join(repeated)}; list each (name, lr) once")
        if "output_dir" in self.overrides:
            raise ValueError("overrides: output_dir is set by the study (source_dir, default <output_dir>/run): remove")
        if self.source_path.resolve() == Path(self.output_dir).resolve():
            raise ValueError(
                "source_dir: the source run needs its own folder (both keep an mlflow_run_id file); "
                "leave it unset for <output_dir>/run"
            )
        return self

    @property
    def source_path(self) -> Path:
        """The source run's folder: ``source_dir``, or ``<output_dir>/run``."""
        return Path(self.source_dir) if self.source_dir else Path(self.output_dir) / "run"

    def source_config(self) -> RunConfig:
        """The source run's config: ``preset`` + ``overrides`` in ``source_path``, keeping every checkpoint
        (so that middle and any step stay available). Raises ``ConfigError`` naming the bad setting."""
        cfg = load_config(self.preset, merge(nest(self.overrides), {"output_dir": str(self.source_path)}))
        every = cfg.checkpoint_every
        needed = math.ceil(cfg.steps / every) if every else 1
        if needed > cfg.keep_checkpoints:
            cfg.keep_checkpoints = needed
        return cfg

    def check(self) -> RunConfig:
        """Validate everything the study will need before it starts: the source run's settings and the batch.
        Returns the source config."""
        cfg = self.source_config()
        missing = [s for s in self.stages if isinstance(s, int) and s not in checkpoint_steps(cfg)]
        if missing:
            raise ConfigError(
                f"stages: {missing} are not checkpoint steps of the source run (steps={cfg.steps}, checkpoint_every="
                f"{cfg.checkpoint_every}); available: {', '.join(map(str, checkpoint_steps(cfg)))}"
            )
        return cfg

    def params(self) -> dict[str, str]:
        """The study's settings as flat MLflow params (overrides nested, as sorted JSON, so that dotted and nested
        spellings of the same settings are the same param)."""
        import json

        return {
            "preset": self.preset,
            "overrides": json.dumps(nest(self.overrides), sort_keys=True),
            "output_dir": self.output_dir,
            "source_dir": str(self.source_path),
            "stages": ",".join(map(str, self.stages)),
            "optimizers": ",".join(f"{c.name}:{c.lr:g}" for c in self.optimizers),
            "prompts": str(self.prompts),
            "batches": str(self.batches),
            "seed": str(self.seed),
            "experiment": self.experiment,
        }


def checkpoint_steps(cfg: RunConfig) -> list[int]:
    """The steps a finished run of ``cfg`` has checkpoints of, with 0 for the initial policy."""
    every = cfg.checkpoint_every
    steps = set(range(every, cfg.steps + 1, every)) if every else set()
    return sorted({0, cfg.steps} | steps)


def prompt_order_seed(seed: int) -> int:
    """Seed of the study's prompt order: batch k of every stage is ``DataOrder(train, B, this).batch(k)``."""
    return derive_seed(seed, "estimator-study-prompts", 0)


def rollout_seed(seed: int, checkpoint_step: int, batch: int) -> int:
    """Seed of the rollouts of ``batch`` at ``checkpoint_step``. Batch 0 keeps the purpose string of the single-batch
    study (``estimator-study``), so its numbers are those of a study with ``batches = 1``; batch k > 0 draws from
    ``estimator-study/batch-k``."""
    purpose = "estimator-study" if batch == 0 else f"estimator-study/batch-{batch}"
    return derive_seed(seed, purpose, checkpoint_step)
