"""Printing helpers shared by the sub-commands."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_summary(summary: dict) -> None:
    """The end-of-run table: accuracy before/after, entropy start/end, and where the results are."""
    table = Table(title=f"steer train: {summary['algorithm']}, {summary['steps']} steps", show_header=False)
    rows = [
        ("held-out accuracy before", summary["heldout_accuracy_before"]),
        ("held-out accuracy after", summary["heldout_accuracy_after"]),
        ("best held-out accuracy (trained steps)", summary.get("heldout_accuracy_best")),
        ("rollout entropy, first step", summary["entropy_first"]),
        ("rollout entropy, last step", summary["entropy_last"]),
        ("resumed from step", summary["resumed_from"]),
        (
            "MLflow run",
            summary.get("mlflow_run_url") or f"{summary['mlflow_run_id']}  ({summary['mlflow_tracking_uri']})",
        ),
        ("logged model", summary.get("model_uri") or "not logged (tracking.log_model=false)"),
        ("rollouts (Parquet)", summary["rollouts_dir"]),
        ("checkpoints", summary["checkpoints_dir"]),
    ]
    for k, v in rows:
        table.add_row(k, _fmt(v))
    Console().print(table)


def announce_prefect(prog: str) -> None:
    """Say so when the flow is about to start Prefect's ephemeral API server (10-30 s on 2 cores, silent otherwise):
    no ``PREFECT_API_URL`` is set in the environment or the active Prefect profile."""
    import sys

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print(
            f"{prog}: starting Prefect's ephemeral API server (10-30 s here; set PREFECT_API_URL to a running "
            "`prefect server start` to skip this) ...",
            file=sys.stderr,
            flush=True,
        )
