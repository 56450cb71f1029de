"""The comparison of an ablation's arms (the ablation report), computed from plain tables: no Prefect, no MLflow
(``tasks/comparison.py`` reads MLflow).

Inputs, both pandas DataFrames in long form:

- ``metrics``: one row per logged point, columns ``run_id, arm, seed, key, step, value`` (``key`` a metric name of
  docs/algorithms.md such as ``rollout/entropy`` or ``eval/accuracy``);
- ``weights``: the STEER weight histogram of each run, columns ``arm, seed, bin_left, bin_right, count``.

``summary.summary_table`` gives the per-arm table, ``plots.render_report`` writes it with the PNGs to a folder.
"""

from steer.comparison.plots import Report, render_report
from steer.comparison.summary import run_summaries, summary_table, t_interval, table_markdown, weight_histogram

__all__ = [
    "Report",
    "render_report",
    "run_summaries",
    "summary_table",
    "t_interval",
    "table_markdown",
    "weight_histogram",
]
