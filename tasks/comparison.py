"""The ablation report from MLflow: read a parent run's children back, render the report, publish it.

The parent run (tag ``steer.arms``: the arm names in order) has one child per arm and seed (tags
``mlflow.parentRunId``, ``steer.arm``, ``steer.seed``). Everything the report needs is in MLflow, so it can be
rebuilt from a run id alone (``steer report RUN_ID``), over HTTP too:

- metric histories of ``REPORT_KEYS`` of each child (failed or killed children are left out);
- each child's STEER weight histogram, the artifact ``WEIGHT_HIST_ARTIFACT`` (logged by the ablation flow from the
  child's Parquet rollouts, ``log_weight_histogram``).

``publish_report`` logs the PNGs and tables to the parent run under ``report/`` (the table also as an MLflow table
artifact) and, inside a Prefect run, creates a markdown artifact with the table and an image artifact per PNG.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from steer.comparison import Report, render_report, weight_histogram
from steer.comparison.plots import OMEGA
from steer.comparison.summary import ACCURACY, ENTROPY, QUADRANTS, WEIGHT_MEAN
from tasks.tracking import with_retries

REPORT_KEYS = (ENTROPY, ACCURACY, OMEGA, WEIGHT_MEAN, *(f"steer/quadrant/{q}/share" for q in QUADRANTS))
"""The metrics the report reads (names as in docs/algorithms.md)."""

WEIGHT_HIST_ARTIFACT = "rollouts/steer_weight_hist.csv"
"""Artifact path, on each child run, of its token-weight histogram (columns bin_left, bin_right, count)."""

ARMS_TAG, ARM_TAG, SEED_TAG = "steer.arms", "steer.arm", "steer.seed"

MLFLOW_UI_ENV = "STEER_MLFLOW_UI_URL"
"""Base URL of an MLflow UI on the same store (scripts/service.sh sets it): Prefect image artifacts point there."""


def child_runs(client: MlflowClient, parent_run_id: str, include_failed: bool = False) -> list[Run]:
    """The parent's children, sorted by (seed tag, start time); FAILED and KILLED ones only with ``include_failed``
    (a run that broke off would bias the comparison). Raises ``LookupError`` when the parent has no children."""
    parent = with_retries(lambda: client.get_run(parent_run_id))
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = with_retries(lambda: client.search_runs([parent.info.experiment_id], query, max_results=10_000))
    if not runs:
        raise LookupError(f"MLflow run {parent_run_id} has no child runs: give the id of an ablation's parent run")
    if not include_failed:
        runs = [r for r in runs if r.info.status not in ("FAILED", "KILLED")]
    return sorted(runs, key=lambda r: (int(r.data.tags.get(SEED_TAG, 0)), r.info.start_time))


def arm_order(client: MlflowClient, parent_run_id: str, runs: list[Run]) -> list[str]:
    """The parent's ``steer.arms`` order, then any other arm in order of appearance."""
    listed = with_retries(lambda: client.get_run(parent_run_id)).data.tags.get(ARMS_TAG, "")
    seen = [r.data.tags.get(ARM_TAG, r.info.run_name) for r in runs]
    return list(dict.fromkeys([a for a in listed.split(",") if a and a in seen] + seen))


def load_metrics(client: MlflowClient, runs: list[Run], keys=REPORT_KEYS) -> pd.DataFrame:
    """Long table ``run_id, arm, seed, key, step, value`` of ``keys`` over ``runs`` (only the keys a run has)."""
    rows = []
    for run in runs:
        arm, seed = run.data.tags.get(ARM_TAG, run.info.run_name), int(run.data.tags.get(SEED_TAG, 0))
        run_id = run.info.run_id
        for key in (k for k in keys if k in run.data.metrics):
            history = with_retries(lambda run_id=run_id, key=key: client.get_metric_history(run_id, key))
            rows += [(run_id, arm, seed, key, m.step, m.value) for m in history]
    return pd.DataFrame(rows, columns=["run_id", "arm", "seed", "key", "step", "value"])


def load_weight_histograms(client: MlflowClient, runs: list[Run]) -> pd.DataFrame:
    """Each child's ``WEIGHT_HIST_ARTIFACT`` with ``arm, seed`` columns; children without one are left out."""
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            try:
                path = client.download_artifacts(run.info.run_id, WEIGHT_HIST_ARTIFACT, tmp)
            except (MlflowException, OSError):  # a child that failed before its rollouts were summarised
                continue
            hist = pd.read_csv(path)
            frames.append(
                hist.assign(arm=run.data.tags.get(ARM_TAG, run.info.run_name), seed=int(run.data.tags.get(SEED_TAG, 0)))
            )
    columns = ["arm", "seed", "bin_left", "bin_right", "count"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def rebuild_report(client: MlflowClient, parent_run_id: str, out_dir: str | os.PathLike) -> Report:
    """Read the ablation of ``parent_run_id`` from MLflow and render its report into ``out_dir``."""
    runs = child_runs(client, parent_run_id)
    arms = arm_order(client, parent_run_id, runs)
    return render_report(load_metrics(client, runs), load_weight_histograms(client, runs), out_dir, arms)


def log_weight_histogram(client: MlflowClient, run_id: str, rollouts_dir: str | os.PathLike) -> pd.DataFrame:
    """Histogram a run's Parquet token weights and log it to the run as ``WEIGHT_HIST_ARTIFACT``."""
    hist = weight_histogram(rollouts_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(WEIGHT_HIST_ARTIFACT).name
        hist.to_csv(path, index=False)
        folder = str(Path(WEIGHT_HIST_ARTIFACT).parent)
        with_retries(lambda: client.log_artifact(run_id, str(path), artifact_path=folder))
    return hist


def artifact_url(client: MlflowClient, run_id: str, path: str) -> str:
    """A URL a browser can open for a run's artifact: through the MLflow server or UI when one is known (the
    tracking URI is http, or ``STEER_MLFLOW_UI_URL`` is set), else the artifact's file URI."""
    uri = client.tracking_uri if client.tracking_uri.startswith("http") else os.environ.get(MLFLOW_UI_ENV, "")
    if uri:
        return f"{uri.rstrip('/')}/get-artifact?path={quote(path)}&run_uuid={run_id}"
    base = with_retries(lambda: client.get_run(run_id)).info.artifact_uri.rstrip("/")
    return f"{base if ':' in base else Path(base).resolve().as_uri()}/{path}"


def publish_report(client: MlflowClient, parent_run_id: str, report: Report) -> dict[str, str]:
    """Log the report's files to the parent run under ``report/`` and its table as ``report/summary_table.json``
    (MLflow's table artifact); returns {plot name: URL}."""
    for path in report.files.values():
        with_retries(lambda path=path: client.log_artifact(parent_run_id, str(path), artifact_path="report"))
    with_retries(lambda: client.log_table(parent_run_id, data=report.table, artifact_file="report/summary_table.json"))
    pngs = {k: p for k, p in report.files.items() if p.suffix == ".png"}
    return {name: artifact_url(client, parent_run_id, f"report/{p.name}") for name, p in pngs.items()}


def prefect_artifacts(report: Report, urls: dict[str, str], parent_run_id: str, tracking_uri: str) -> None:
    """A markdown artifact (key ``ablation-summary``) with the table and links, an image artifact per PNG."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    lines = [
        f"# Ablation `{parent_run_id}`",
        "",
        report.markdown,
        "",
        f"MLflow: `{tracking_uri}`, parent run `{parent_run_id}`; re-render with `steer report {parent_run_id}`.",
        "",
        "## Plots",
        "",
    ]
    lines += [f"- [{name}]({url})" for name, url in urls.items()]
    lines += [f"- {name}: skipped, {why}" for name, why in report.skipped.items()]
    create_markdown_artifact("\n".join(lines), key="ablation-summary", description="STEER ablation summary")
    for name, url in urls.items():
        create_image_artifact(url, key=f"ablation-{name.replace('_', '-')}", description=f"ablation {name} plot")


@task(name="ablation-report", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def build_report(tracking_uri: str, parent_run_id: str, out_dir: str) -> dict:
    """Rebuild the report from MLflow, log it to the parent run and as Prefect artifacts; returns a small summary:
    the table rows, the files and the plots skipped (why)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    report = rebuild_report(client, parent_run_id, out_dir)
    urls = publish_report(client, parent_run_id, report)
    prefect_artifacts(report, urls, parent_run_id, tracking_uri)
    return {
        "table": report.table.to_dict("records"),
        "markdown": report.markdown,
        "files": {k: str(v) for k, v in report.files.items()},
        "skipped": report.skipped,
    }
