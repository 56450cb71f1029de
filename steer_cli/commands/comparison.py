"""``steer report RUN_ID``: re-render an ablation's report from MLflow alone (the parent run id -> its children ->
their metric histories and weight histograms) into a folder, and print the summary table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_STORE = Path("runs/ablation/mlflow.db")
"""The store ``steer ablate`` writes by default; used when neither --tracking-uri nor MLFLOW_TRACKING_URI is set."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="the ablation's parent MLflow run id (printed by `steer ablate`)")
    p.add_argument(
        "--tracking-uri", help=f"MLflow store or server; default: $MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_STORE}"
    )
    p.add_argument("--output-dir", help="where the PNGs and tables go; default: runs/report-<first 8 of RUN_ID>")


def print_table(table) -> None:
    """The per-arm summary (a DataFrame or its records) as a console table: mean ± 95% t-interval over seeds."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from steer.comparison.summary import formatted_rows

    headers, rows = formatted_rows(pd.DataFrame(table))
    out = Table(title="ablation: mean ± 95% t-interval over seeds")
    for i, h in enumerate(headers):
        out.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        out.add_row(*r)
    Console(width=max(200, Console().width)).print(out)  # 12 columns of "0.403 ± 0.001"


def run(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.comparison import rebuild_report

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        if not DEFAULT_STORE.exists():
            hint = "say which MLflow store holds the run, e.g. --tracking-uri sqlite:///runs/ablation/mlflow.db"
            print(f"steer report: no --tracking-uri, MLFLOW_TRACKING_URI or {DEFAULT_STORE}: {hint}", file=sys.stderr)
            return 2
        uri = f"sqlite:///{DEFAULT_STORE.resolve()}"
    out = Path(args.output_dir or f"runs/report-{args.run_id[:8]}")
    try:
        report = rebuild_report(MlflowClient(tracking_uri=uri), args.run_id, out)
    except (LookupError, MlflowException) as e:
        print(f"steer report: {e}", file=sys.stderr)
        return 2
    print_table(report.table)
    for name, path in report.files.items():
        print(f"{name:>18}: {path}")
    for name, why in report.skipped.items():
        print(f"{name:>18}: skipped, {why}")
    return 0
