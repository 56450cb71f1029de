"""A training run's progress where people look: the Prefect UI (flow-run logs and artifacts), a terminal, a worker
log or ``| tee``.

- One plain line per step (``step 3/30  reward +0.125  acc 0.562  entropy 1.234  0.8 s``) through the logger
  ``steer.progress``: to the flow run's logs in the Prefect API (whatever ``PREFECT_LOGGING_LEVEL`` says about
  Prefect's own chatter) and to stdout, so a run is visible while it runs in the UI, a terminal or a log file alike.
- A live progress artifact (the share of steps done) on the flow run's Artifacts tab.
- A link artifact to the MLflow run as soon as it is known, and at the end a markdown artifact with the run's
  summary table and links to the MLflow run and its metrics.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler

PROGRESS_LOGGER = "steer.progress"
"""The logger of the per-step lines (to the Prefect API and stdout)."""

STEP_FIELDS = (
    ("reward", "reward/mean", "{:+.3f}"),
    ("acc", "reward/accuracy", "{:.3f}"),
    ("entropy", "rollout/entropy", "{:.3f}"),
)
"""What a step line shows: label, metric name, format."""


def progress_logger() -> logging.Logger:
    """``steer.progress``: INFO lines to the Prefect API (the current flow run's logs) and to stdout, formatted
    plainly; it does not propagate, so Prefect's console settings neither hide nor repeat it."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        api = APILogHandler()
        api.setLevel(logging.INFO)
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(api)
        logger.addHandler(console)
    return logger


def step_line(step: int, total: int, metrics: Mapping[str, float], seconds: float) -> str:
    """``step 3/30  reward +0.125  acc 0.562  entropy 1.234  0.8 s`` (``step`` counts from 1: steps done)."""
    parts = [f"step {step}/{total}"]
    for label, key, fmt in STEP_FIELDS:
        if key in metrics:
            parts.append(f"{label} {fmt.format(float(metrics[key]))}")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run: through an http(s) tracking server, or ``STEER_MLFLOW_UI_URL`` (an MLflow UI over
    the same store, as ``scripts/service.sh`` runs); None for a local store with no UI known."""
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else os.environ.get("STEER_MLFLOW_UI_URL")
    if not base:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def flow_run_link() -> tuple[str | None, str | None]:
    """The current flow run's id and, where a Prefect UI is configured (``PREFECT_UI_URL``), its page."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None, None
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    run_id = str(ctx.flow_run.id)
    return run_id, (f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui else None)


class RunProgress:
    """Reports one training flow run's progress: step lines, a progress artifact, the MLflow link and a summary.

    Artifact keys are per run name (``train-<algorithm>-s<seed>``), so the Artifacts page keeps one versioned entry per
    arm and seed; a resumed run continues from its checkpoint's step."""

    def __init__(self, label: str, total: int, done: int) -> None:
        self.label, self.total = label, total
        key = "train-" + re.sub(r"[^a-z0-9-]+", "-", label.lower())  # artifact keys: lowercase, digits, dashes
        self.key = key
        self.log = progress_logger()
        self._artifact: UUID | None = create_progress_artifact(
            progress=100.0 * done / total, key=f"{key}-progress", description=f"{label}: steps done of {total}"
        )

    def link_mlflow(self, url: str | None, tracking_uri: str, run_id: str) -> None:
        where = url or f"{tracking_uri} (run {run_id}; `mlflow ui --backend-store-uri {tracking_uri}` shows it)"
        self.log.info("[%s] MLflow run %s: %s", self.label, run_id, where)
        if url:
            create_link_artifact(link=url, link_text=f"MLflow run {run_id}", key=f"{self.key}-mlflow")

    def step(self, done: int, metrics: Mapping[str, float], seconds: float) -> None:
        self.log.info("[%s] %s", self.label, step_line(done, self.total, metrics, seconds))
        if self._artifact is not None:
            update_progress_artifact(self._artifact, progress=100.0 * done / self.total)

    def summary(self, summary: Mapping[str, Any], mlflow_url: str | None) -> None:
        """The end-of-run markdown artifact: the summary table and the links."""
        rows = [
            ("algorithm", summary["algorithm"]),
            ("steps", summary["steps"]),
            ("resumed from step", summary["resumed_from"]),
            ("held-out accuracy before", summary["heldout_accuracy_before"]),
            ("held-out accuracy after", summary["heldout_accuracy_after"]),
            ("best held-out accuracy (trained steps)", summary.get("heldout_accuracy_best")),
            ("rollout entropy, first step", summary["entropy_first"]),
            ("rollout entropy, last step", summary["entropy_last"]),
            ("MLflow run", f"[{summary['mlflow_run_id']}]({mlflow_url})" if mlflow_url else summary["mlflow_run_id"]),
            ("MLflow store", f"`{summary['mlflow_tracking_uri']}`"),
            ("logged model", f"`{summary['model_uri']}`" if summary.get("model_uri") else "not logged"),
            ("rollouts (Parquet)", f"`{summary['rollouts_dir']}`"),
            ("checkpoints", f"`{summary['checkpoints_dir']}`"),
        ]
        table = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rows)
        markdown = f"# {self.label}\n\n| | |\n| --- | --- |\n{table}\n"
        if mlflow_url:
            markdown += f"\nMetrics and plots: [{mlflow_url}]({mlflow_url})\n"
        create_markdown_artifact(markdown=markdown, key=f"{self.key}-summary", description=f"{self.label}: summary")
        self.log.info(
            "[%s] done: held-out accuracy %s -> %s, entropy %s -> %s",
            self.label,
            _fmt(summary["heldout_accuracy_before"]),
            _fmt(summary["heldout_accuracy_after"]),
            _fmt(summary["entropy_first"]),
            _fmt(summary["entropy_last"]),
        )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
