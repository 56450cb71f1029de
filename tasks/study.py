"""Prefect tasks of the estimator study: whether the source run is finished, which policy each stage measures, the
study batch, one optimizer step per cell, and the outputs (Parquet, tables, PNGs, MLflow). Thin wrappers around
``steer.studies``.

Loading a policy touches the disk or the hub, so it retries; the optimizer step works on a copy of the policy and is
a pure function of its inputs, but it is the expensive part and is not retried (a rerun of the study redoes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from steer.advantages import compute_advantages
from steer.batch import PolicyBatch, build_policy_batch
from steer.checkpoint import latest_checkpoint, list_checkpoints
from steer.config import RunConfig
from steer.rollout.base import RolloutBatch
from steer.studies.config import OptimizerCell
from steer.studies.estimator import (
    CELL_KEYS,
    ENTROPY_CHANGE_ESTIMATORS,
    StepResult,
    cell_label,
    entropy_change_step,
    predict,
    score_states,
    summary_markdown,
    table_markdown,
)
from steer.studies.plots import scatter_figure
from tasks.tracking import RUN_ID_FILE, MlflowTracker

TABLE_STATS = ("n", "pearson", "spearman", "scale", "mse", "mse_zero", "sign_agreement")
"""The estimator table's statistics, each logged (the mean over rollout batches) as
``estimator/<cell>/<estimator>[/<subset>]/<stat>``."""
CELL_STATS = ("mean_abs_realized", "mean_realized", "nonlinearity", "param_delta_norm")
"""The cell table's columns logged (the mean over rollout batches) as ``estimator/<cell>/<column>``."""


@dataclass(frozen=True)
class StagePolicy:
    """The policy one stage measures: its label, the checkpoint step (0: the initial policy) and where it loads."""

    stage: str
    step: int
    path: str


@task(name="finished-source-run", cache_policy=NO_CACHE)
def finished_source_run(cfg: RunConfig) -> str | None:
    """The MLflow run id of the source run in ``cfg.output_dir`` when it is finished (a complete checkpoint of step
    ``cfg.steps`` and a recorded run id), else None: then the training flow has to run (or resume) it."""
    out = Path(cfg.output_dir)
    last = latest_checkpoint(out / "checkpoints")
    if last is None or int(last.name.removeprefix("step-")) < cfg.steps or not (out / RUN_ID_FILE).exists():
        return None
    return (out / RUN_ID_FILE).read_text().strip()


@task(name="resolve-stages", cache_policy=NO_CACHE)
def resolve_stages(stages: list[str | int], cfg: RunConfig, initial_policy: str) -> list[StagePolicy]:
    """start -> the initial policy; end -> the last checkpoint; middle -> the checkpoint nearest steps / 2 (the
    earlier on a tie); an integer -> that checkpoint. Raises ``LookupError`` listing the available steps."""
    found = {int(p.name.removeprefix("step-")): str(p) for p in list_checkpoints(Path(cfg.output_dir) / "checkpoints")}
    available = {0: initial_policy, **found}
    out = []
    for s in stages:
        if s == "start":
            step = 0
        elif s == "end":
            step = max(available)
        elif s == "middle":
            step = min(found or available, key=lambda k: (abs(k - cfg.steps / 2), k))
        else:
            step = int(s)
        if step not in available:
            raise LookupError(
                f"stages: no checkpoint of step {step} in {cfg.output_dir}/checkpoints; available: "
                f"{', '.join(map(str, sorted(available)))} (0 is the initial policy)"
            )
        out.append(StagePolicy(str(s), step, available[step]))
    return out


@task(name="load-stage-policy", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def load_stage_policy(stage: StagePolicy, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) of the stage, float32, in eval mode."""
    from steer.models.loading import load_policy

    return load_policy(stage.path, dtype=torch.float32, device=device)


def _autocast(cfg: RunConfig) -> torch.dtype | None:
    """The source run's forward precision, used alike before and after the step (so lr = 0 still realizes 0)."""
    return torch.bfloat16 if cfg.model.autocast_bf16 else None


@task(name="study-batch", cache_policy=NO_CACHE)
def study_batch(
    model: Any, tokenizer: Any, rollout: RolloutBatch, rewards: torch.Tensor, cfg: RunConfig
) -> PolicyBatch:
    """Advantages (the source run's estimator), the trainer's layout, and log p / H before the step (N, T)."""
    lengths = rollout.response_mask.sum(-1)  # (N,)
    adv = compute_advantages(rewards, rollout.group_index, estimator=cfg.algorithm.advantage_estimator, lengths=lengths)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    batch = build_policy_batch(
        rollout.prompt_ids, rollout.group_index, rollout.response_ids, rollout.response_mask, adv, pad_id=pad
    ).to(device)
    batch.old_logp, batch.old_entropy = score_states(
        model,
        batch,
        micro_batch_size=cfg.optim.micro_batch_size,
        temperature=cfg.rollout.temperature,
        autocast_dtype=_autocast(cfg),
    )
    return batch


@task(name="predict-changes", cache_policy=NO_CACHE)
def predict_changes(batch: PolicyBatch, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """Every estimator's prediction (N, T) on the scored batch; the policy scored it, so p = p_old and H = H_old."""
    a = cfg.algorithm
    return predict(
        ENTROPY_CHANGE_ESTIMATORS.names(),
        batch.old_logp,
        batch.old_logp,
        batch.old_entropy,
        batch.old_entropy,
        batch.advantages,
        batch.response_mask,
        eps_low=a.clip.eps_low,
        eps_high=a.clip.eps_high,
    )


@task(name="optimizer-step", retries=0, cache_policy=NO_CACHE)
def optimizer_step(model: Any, batch: PolicyBatch, cfg: RunConfig, cell: OptimizerCell) -> StepResult:
    """One step of ``cell`` from a copy of ``model`` (which is left unchanged), then H at the same states."""
    return entropy_change_step(
        model,
        batch,
        cfg.algorithm,
        optimizer=cell.name,
        lr=cell.lr,
        micro_batch_size=cfg.optim.micro_batch_size,
        temperature=cfg.rollout.temperature,
        autocast_dtype=_autocast(cfg),
    )


def _replace(tmp: Path, path: Path) -> str:
    tmp.replace(path)
    return str(path)


@task(name="write-study", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def write_study(
    frame: pd.DataFrame, table: pd.DataFrame, summary: pd.DataFrame, cells: pd.DataFrame, output_dir: str
) -> dict[str, Any]:
    """``tokens.parquet``, ``estimator_table.csv``/``.md`` (per batch), ``estimator_summary.csv``/``.md`` (over
    batches; the markdown shows the ``all`` and ``states`` subsets), ``cells.csv`` and ``scatter/<cell>.png`` (one
    figure per optimizer cell, the batches pooled), each written to a temporary name and renamed. Returns their
    paths."""
    out = Path(output_dir)
    (out / "scatter").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {}
    frame.to_parquet(out / "tokens.parquet.tmp", engine="pyarrow", index=False)
    paths["tokens"] = _replace(out / "tokens.parquet.tmp", out / "tokens.parquet")
    table.to_csv(out / "estimator_table.csv.tmp", index=False)
    paths["table_csv"] = _replace(out / "estimator_table.csv.tmp", out / "estimator_table.csv")
    (out / "estimator_table.md.tmp").write_text(table_markdown(table))
    paths["table_md"] = _replace(out / "estimator_table.md.tmp", out / "estimator_table.md")
    summary.to_csv(out / "estimator_summary.csv.tmp", index=False)
    paths["summary_csv"] = _replace(out / "estimator_summary.csv.tmp", out / "estimator_summary.csv")
    (out / "estimator_summary.md.tmp").write_text(summary_markdown(summary))
    paths["summary_md"] = _replace(out / "estimator_summary.md.tmp", out / "estimator_summary.md")
    cells.to_csv(out / "cells.csv.tmp", index=False)
    paths["cells_csv"] = _replace(out / "cells.csv.tmp", out / "cells.csv")
    paths["scatter"] = []
    for (opt, lr), cell in frame.groupby(["optimizer", "lr"], sort=False):
        fig = scatter_figure(cell, table, title=f"{opt} lr={lr:g}: one step, predicted vs realized entropy change")
        png = out / "scatter" / f"{cell_label(opt, lr)}.png"
        fig.savefig(png.with_suffix(".tmp.png"), dpi=90)
        paths["scatter"].append(_replace(png.with_suffix(".tmp.png"), png))
    return paths


def study_metrics(table: pd.DataFrame, cells: pd.DataFrame) -> dict[int, dict[str, float]]:
    """checkpoint step -> metrics, each the mean over the rollout batches where it is defined:
    ``estimator/<cell>/<estimator>/<stat>`` on subset ``all``, ``estimator/<cell>/<estimator>/<subset>/<stat>`` on the
    others, and ``estimator/<cell>/<column>`` of the cell table. NaN (undefined in every batch) is left out."""
    out: dict[int, dict[str, float]] = {}
    table = table.groupby([*CELL_KEYS, "estimator", "subset"], sort=False)[list(TABLE_STATS)].mean().reset_index()
    cells = cells.groupby(CELL_KEYS, sort=False)[list(CELL_STATS)].mean().reset_index()
    for rec in table.to_dict("records"):
        prefix = f"estimator/{cell_label(rec['optimizer'], rec['lr'])}/{rec['estimator']}"
        prefix += "" if rec["subset"] == "all" else f"/{rec['subset']}"
        metrics = out.setdefault(int(rec["checkpoint_step"]), {})
        metrics.update({f"{prefix}/{s}": float(rec[s]) for s in TABLE_STATS if not math.isnan(float(rec[s]))})
    for rec in cells.to_dict("records"):
        prefix = f"estimator/{cell_label(rec['optimizer'], rec['lr'])}"
        metrics = out.setdefault(int(rec["checkpoint_step"]), {})
        for col in CELL_STATS:
            if not math.isnan(float(rec[col])):
                metrics[f"{prefix}/{col}"] = float(rec[col])
    return out


@task(name="log-study", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_study(tracker: MlflowTracker, table: pd.DataFrame, cells: pd.DataFrame, paths: dict[str, Any]) -> None:
    """Metrics per checkpoint step, and the files as artifacts (``tables/``, ``scatter/``, ``tokens/``)."""
    for step, metrics in sorted(study_metrics(table, cells).items()):
        tracker.log_metrics(metrics, step=step)
    for key in ("table_csv", "table_md", "summary_csv", "summary_md", "cells_csv"):
        tracker.log_artifact(paths[key], "tables")
    for png in paths["scatter"]:
        tracker.log_artifact(png, "scatter")
    tracker.log_artifact(paths["tokens"], "tokens")
