"""The ablation's summary table: per run, then per arm as mean +- a 95% t-interval over seeds.

Per run (``run_summaries``), from the metric history:

| column | definition |
| --- | --- |
| ``final_accuracy`` | ``eval/accuracy`` at the run's last evaluation |
| ``start_accuracy`` | ``eval/accuracy`` of the starting policy (step 0), before any update |
| ``best_accuracy`` | the highest ``eval/accuracy`` of a trained policy (step > 0); the start is its own column, so
an arm that only loses accuracy does not report the untrained policy's as its best |
| ``final_entropy`` | mean ``rollout/entropy`` over the last ``ENTROPY_WINDOW`` of the steps (at least one step) |
| ``entropy_drop_pct`` | ``100 (H_first - H_last) / H_first``, each the mean ``rollout/entropy`` over the first or last
``ENTROPY_WINDOW`` of the steps (negative: the entropy rose) |
| ``mean_weight`` | ``steer/weight_mean`` over the run's steps (n/a for an arm that logs no token weights) |
| ``<quadrant>_share`` | ``steer/quadrant/<quadrant>/share`` averaged over the run's steps, for each of
``QUADRANTS`` (the sign of A, and p above or below the quadrant threshold: docs/algorithms.md) |

The rollout entropy of one step is the mean over one batch's tokens and moves by ~10% from step to step on the
embedded default, so the ends are window means rather than single steps.

Per arm (``summary_table``): ``<column>_mean`` and ``<column>_ci95``, the half-width of the two-sided 95% Student-t
interval of the mean over seeds, ``t_{0.975, n-1} s / sqrt(n)`` (NaN with one seed).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from scipy import stats

from steer.rollout_store import read_rollouts

QUADRANTS = {
    "pos_high": "A > 0, high-probability token (lowers H)",
    "pos_low": "A > 0, low-probability token (raises H)",
    "neg_high": "A < 0, high-probability token (raises H)",
    "neg_low": "A < 0, low-probability token (lowers H)",
}
"""``steer/quadrant/<name>/share`` and what an update on such a token does to the entropy (docs/algorithms.md, 5)."""

COLUMNS: dict[str, str] = {
    "start_accuracy": "start accuracy",
    "final_accuracy": "final accuracy",
    "best_accuracy": "best accuracy",
    "final_entropy": "final entropy",
    "entropy_drop_pct": "entropy drop %",
    "mean_weight": "mean w",
    **{f"{q}_share": q for q in QUADRANTS},
}
"""Summary columns and their headers in the printed table."""

ACCURACY, ENTROPY, WEIGHT_MEAN = "eval/accuracy", "rollout/entropy", "steer/weight_mean"
ENTROPY_WINDOW = 0.1
"""Fraction of a run's steps averaged at each end for ``final_entropy`` and ``entropy_drop_pct``."""


def t_interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval) of the finite ``values``; the half-width is NaN below two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def _series(run: pd.DataFrame, key: str) -> pd.Series:
    """value by step of one metric of one run (sorted by step; empty when the run has no such metric)."""
    rows = run[run.key == key]
    return rows.groupby("step")["value"].last().sort_index()


def _run_mean(run: pd.DataFrame, key: str) -> float:
    values = _series(run, key)
    return float(values.mean()) if len(values) else math.nan


def run_summaries(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``arm, seed, run_id`` and the ``COLUMNS``; NaN where a run lacks the metric."""
    rows = []
    for (arm, seed, run_id), run in metrics.groupby(["arm", "seed", "run_id"], sort=False):
        acc, ent = _series(run, ACCURACY), _series(run, ENTROPY)
        trained = acc[acc.index > 0]
        w = max(1, round(ENTROPY_WINDOW * len(ent)))
        first, last = (ent.iloc[:w].mean(), ent.iloc[-w:].mean()) if len(ent) else (math.nan, math.nan)
        rows.append(
            dict(
                arm=arm,
                seed=int(seed),
                run_id=run_id,
                start_accuracy=acc.loc[0] if 0 in acc.index else math.nan,
                final_accuracy=acc.iloc[-1] if len(acc) else math.nan,
                best_accuracy=trained.max() if len(trained) else math.nan,
                final_entropy=last,
                entropy_drop_pct=100 * (first - last) / first if first else math.nan,
                mean_weight=_run_mean(run, WEIGHT_MEAN),
                **{f"{q}_share": _run_mean(run, f"steer/quadrant/{q}/share") for q in QUADRANTS},
            )
        )
    return pd.DataFrame(rows, columns=["arm", "seed", "run_id", *COLUMNS])


def summary_table(metrics: pd.DataFrame, arms: list[str] | None = None) -> pd.DataFrame:
    """One row per arm (in ``arms`` order, else first appearance): ``arm, seeds`` and ``<column>_mean``,
    ``<column>_ci95`` for each of ``COLUMNS``."""
    runs = run_summaries(metrics)
    order = arms or list(dict.fromkeys(runs.arm))
    rows = []
    for arm in order:
        sub = runs[runs.arm == arm]
        if sub.empty:
            continue
        row: dict = {"arm": arm, "seeds": len(sub)}
        for col in COLUMNS:
            row[f"{col}_mean"], row[f"{col}_ci95"] = t_interval(sub[col].tolist())
        rows.append(row)
    cols = ["arm", "seeds"] + [f"{c}_{s}" for c in COLUMNS for s in ("mean", "ci95")]
    return pd.DataFrame(rows, columns=cols)


def _cell(mean: float, half: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def formatted_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells ("0.412 ± 0.031") of the summary table, for markdown and the console."""
    headers = ["arm", "seeds", *COLUMNS.values()]
    rows = []
    for r in table.to_dict("records"):
        cells = [r["arm"], str(r["seeds"])]
        for col in COLUMNS:
            cells.append(_cell(r[f"{col}_mean"], r[f"{col}_ci95"], 1 if col == "entropy_drop_pct" else 3))
        rows.append(cells)
    return headers, rows


def table_markdown(table: pd.DataFrame) -> str:
    """The summary table as GitHub markdown, with a line saying what ± means."""
    headers, rows = formatted_rows(table)
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append("mean ± half-width of the 95% t-interval over seeds; accuracy is `eval/accuracy` (held-out), entropy")
    lines.append("`rollout/entropy` averaged over the last 10% of the steps; entropy drop % = 100 (first - last) /")
    lines.append("first, with both ends averaged over 10% of the steps; mean w is `steer/weight_mean` and the quadrant")
    lines.append("columns `steer/quadrant/*/share`, each averaged over the run.")
    return "\n".join(lines)


def weight_histogram(rollouts_dir: str | os.PathLike, bins: int = 50) -> pd.DataFrame:
    """Counts of every token's ``steer_weight`` in a run's Parquet rollouts over ``bins`` equal bins of [0, 1]
    (weight 1 falls in the last bin): columns ``bin_left, bin_right, count``."""
    table = read_rollouts(rollouts_dir, columns=["steer_weight"])
    values = pc.list_flatten(table.column("steer_weight")).to_numpy(zero_copy_only=False)  # (sum of lengths,)
    # float32 lambda_min = 0.7 is 0.69999999: rounding keeps a weight equal to an edge in the bin that edge starts
    values = np.clip(np.round(values.astype(np.float64), 6), 0.0, 1.0)
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)
    counts, _ = np.histogram(values, bins=edges)
    return pd.DataFrame({"bin_left": edges[:-1], "bin_right": edges[1:], "count": counts.astype(np.int64)})
