"""Merge the reports of several ablation folders (each with its own MLflow store) into one report.

For sweeps split over processes or machines: each part runs ``steer ablate`` / ``steer study ...`` into its own
folder, and this reads every folder's parent run, children, metric histories and weight histograms back from its
``mlflow.db`` and renders one report (PNGs, summary.csv, runs.csv, summary.md) plus the long metric table
``metrics.csv`` (run_id, arm, seed, key, step, value) from which any other summary can be computed.

    .venv/bin/python scripts/merge_ablations.py runs/part-a runs/part-b --out runs/merged-report
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from steer.comparison import render_report
from tasks.comparison import child_runs, load_metrics, load_weight_histograms


def read_part(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, weight histograms) of the ablation whose parent run id is in ``folder/mlflow_run_id``."""
    client = MlflowClient(tracking_uri=f"sqlite:///{(folder / 'mlflow.db').resolve()}")
    runs = child_runs(client, (folder / "mlflow_run_id").read_text().strip())
    return load_metrics(client, runs), load_weight_histograms(client, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="ablation output folders (each has mlflow.db)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the merged report")
    ap.add_argument("--arms", help="comma-separated arm order in the plots and table (default: first seen)")
    args = ap.parse_args()
    parts = [read_part(f) for f in args.folders]
    metrics = pd.concat([m for m, _ in parts], ignore_index=True)
    weights = pd.concat([w for _, w in parts], ignore_index=True)
    arms = args.arms.split(",") if args.arms else None
    report = render_report(metrics, weights, args.out, arms)
    metrics.to_csv(args.out / "metrics.csv", index=False)
    print(report.markdown)
    for name, path in report.files.items():
        print(f"{name:>18}: {path}")


if __name__ == "__main__":
    main()
