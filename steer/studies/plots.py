"""The estimator study's scatter figure: predicted vs realized entropy change, one figure per optimizer cell.

Rows are stages, columns estimators. Each panel plots c * prediction (c: the least-squares scale fitted on the
``all`` subset, so that every estimator is on the realized change's scale) against the realized change, one point per
valid token, coloured by quadrant (tokens with A = 0 in grey), with the line y = x and the panel's Pearson r and
Spearman rho on ``all``. The rollout batches of a stage are pooled: every batch's tokens, and c, r and rho the means
over the batches. matplotlib's object API (``Figure``, no pyplot): no global state, safe in threads.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

QUADRANT_COLORS = {
    "zero": "0.75",
    "pos_high": "tab:blue",
    "pos_low": "tab:green",
    "neg_high": "tab:red",
    "neg_low": "tab:orange",
}
"""Drawing order and colour: tokens with A = 0 first, underneath the quadrants."""


def scatter_figure(cell: pd.DataFrame, table: pd.DataFrame, title: str) -> Figure:
    """Scatter panels for one optimizer cell.

    Args:
        cell: the token frame's rows of one (optimizer, lr), any number of stages and rollout batches.
        table: the estimator table (``estimator_table``), for the fitted scale and the correlations.
        title: the figure's title (the cell, e.g. ``sgd lr=0.001``).
    """
    stages = list(dict.fromkeys(cell["stage"]))
    names = [c.removeprefix("pred_") for c in cell.columns if c.startswith("pred_")]
    fig = Figure(figsize=(3.2 * len(names), 2.9 * len(stages) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(stages), len(names), squeeze=False))
    fig.suptitle(title)
    for i, stage in enumerate(stages):
        rows = cell[cell["stage"] == stage]
        real = rows["realized"].to_numpy()
        step = int(rows["checkpoint_step"].iloc[0])
        for j, name in enumerate(names):
            ax = axes[i, j]
            opt, lr = rows["optimizer"].iloc[0], rows["lr"].iloc[0]
            stat = table[
                (table.stage == stage)
                & (table.estimator == name)
                & (table.subset == "all")
                & (table.optimizer == opt)
                & (table.lr == lr)
            ]
            scale = float(stat["scale"].mean()) if len(stat) else float("nan")  # over batches (NaN skipped)
            pred = rows[f"pred_{name}"].to_numpy() * (0.0 if math.isnan(scale) else scale)
            for q, color in QUADRANT_COLORS.items():
                m = (rows["quadrant"] == q).to_numpy()
                if m.any():
                    ax.scatter(pred[m], real[m], s=4, alpha=0.5, color=color, label=q, linewidths=0)
            lim = float(np.nanmax(np.abs(np.r_[pred, real, 1e-12])))
            ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.6, ls="--")
            ax.axhline(0, color="k", lw=0.3)
            ax.axvline(0, color="k", lw=0.3)
            if len(stat):
                r, rho = float(stat["pearson"].mean()), float(stat["spearman"].mean())
                ax.set_title(f"{name}: r={r:.2f}, rho={rho:.2f}, c={scale:.2g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{stage} (step {step})\nrealized dH")
            if i == len(stages) - 1:
                ax.set_xlabel("c * predicted dH")
            ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, markerscale=3)
    return fig
