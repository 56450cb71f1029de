"""Printing helpers shared by the sub-commands."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_summary(summary: dict) -> None:
    """The end-of-run table: accuracy before/after, entropy start/end, and where the results are."""
    table = Table(title=f"steer train: {summary['algorithm']}, {summary['steps']} steps", show_header=False)
    rows = [
        ("held-out accuracy before", summary["heldout_accuracy_before"]),
        ("held-out accuracy after", summary["heldout_accuracy_after"]),
        ("rollout entropy, first step", summary["entropy_first"]),
        ("rollout entropy, last step", summary["entropy_last"]),
        ("resumed from step", summary["resumed_from"]),
        ("MLflow run", f"{summary['mlflow_run_id']}  ({summary['mlflow_tracking_uri']})"),
        ("rollouts (Parquet)", summary["rollouts_dir"]),
        ("checkpoints", summary["checkpoints_dir"]),
    ]
    for k, v in rows:
        table.add_row(k, _fmt(v))
    Console().print(table)
