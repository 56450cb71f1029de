"""The ablation's PNGs and ``render_report``, which writes them with the summary table to one folder.

Plots use matplotlib's object API (``Figure``, no pyplot), so rendering holds no global state and is safe in threads.
Each arm keeps one colour in every plot. Curves are the mean over seeds, the band spans the seeds' minimum to maximum.

| file | what |
| --- | --- |
| ``entropy.png`` | ``rollout/entropy`` vs step, per arm |
| ``accuracy.png`` | held-out ``eval/accuracy`` vs step, per arm |
| ``quadrants.png`` | ``steer/quadrant/{pos_high,pos_low,neg_high,neg_low}/share`` vs step, per arm |
| ``steer_weights.png`` | histogram of token weights, arms whose weights are not all 1 (skipped if none) |
| ``omega_vs_entropy.png`` | ``steer/omega_mean`` at step t vs the change of ``rollout/entropy`` from t to t+1 |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from steer.comparison.summary import ENTROPY, QUADRANTS, run_summaries, summary_table, table_markdown

OMEGA = "steer/omega_mean"


@dataclass
class Report:
    """What ``render_report`` wrote: the per-arm table, its markdown, the files, and the plots it skipped (why)."""

    table: pd.DataFrame
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def arm_colors(arms: list[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10"]
    return {arm: cmap(i % 10) for i, arm in enumerate(arms)}


def _wide(metrics: pd.DataFrame, arm: str, key: str) -> pd.DataFrame:
    """(steps, seeds) values of ``key`` for ``arm``."""
    rows = metrics[(metrics.arm == arm) & (metrics.key == key)]
    return rows.pivot_table(index="step", columns="seed", values="value", aggfunc="last").sort_index()


def smoothing_window(num_steps: int) -> int:
    """Rolling-mean window for a per-step curve: 1 (none) up to 40 steps, else 5% of the steps."""
    return 1 if num_steps <= 40 else max(1, round(num_steps / 20))


def _curves(ax, metrics: pd.DataFrame, key: str, arms: list[str], colors: dict, window: int = 1) -> bool:
    """Mean over seeds with a min-max band, one line per arm, each seed's values a trailing rolling mean over
    ``window`` steps; False when no arm has ``key``."""
    drawn = False
    for arm in arms:
        wide = _wide(metrics, arm, key)
        if wide.empty:
            continue
        wide = wide.rolling(window, min_periods=1).mean()
        mean = wide.mean(axis=1)
        marker = "o" if len(mean) <= 12 else None
        ax.plot(mean.index, mean.values, color=colors[arm], marker=marker, ms=4, label=f"{arm} (n={wide.shape[1]})")
        if wide.shape[1] > 1:
            ax.fill_between(mean.index, wide.min(axis=1), wide.max(axis=1), color=colors[arm], alpha=0.18, lw=0)
        drawn = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(alpha=0.3)
    return drawn


def _finish(fig: Figure, ax, path: Path, legend_title: str = "arm (seeds)") -> Path:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8, title=legend_title, title_fontsize=8)
    fig.savefig(path)
    return path


def plot_curve(
    metrics, key: str, ylabel: str, title: str, path: Path, arms: list[str], smooth: bool = False
) -> Path | None:
    """One metric vs step per arm (``smooth``: a rolling mean, ``smoothing_window``); None when no run logged
    ``key``."""
    fig = Figure(figsize=(8, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    window = smoothing_window(metrics[metrics.key == key].step.nunique()) if smooth else 1
    if not _curves(ax, metrics, key, arms, arm_colors(arms), window):
        return None
    if window > 1:
        title = f"{title}, rolling mean over {window} steps"
    ax.set(xlabel="training step", ylabel=ylabel, title=title)
    return _finish(fig, ax, path)


def plot_quadrants(metrics: pd.DataFrame, path: Path, arms: list[str]) -> Path | None:
    """The share of tokens in each (sign of A, high/low probability) quadrant vs step, one panel per quadrant."""
    fig = Figure(figsize=(10, 6.5), dpi=110, layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    colors = arm_colors(arms)
    drawn = [_curves(ax, metrics, f"steer/quadrant/{q}/share", arms, colors) for q, ax in zip(QUADRANTS, axes.flat)]
    if not any(drawn):
        return None
    for (q, meaning), ax in zip(QUADRANTS.items(), axes.flat):
        ax.set_title(f"{q}: {meaning}", fontsize=9)
        ax.set_ylabel("share of tokens")
    for ax in axes[1]:
        ax.set_xlabel("training step")
    fig.suptitle("Token quadrants over training (steer/quadrant/*/share)")
    return _finish(fig, axes.flat[0], path)


def plot_weight_histogram(weights: pd.DataFrame, path: Path, arms: list[str]) -> Path | None:
    """Share of tokens per weight bin, all steps and seeds of an arm pooled; arms whose weights are all 1 (no token
    reweighting) are left out. None when no arm reweights."""
    fig = Figure(figsize=(8, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    colors = arm_colors(arms)
    drawn, lowest = False, 1.0
    for arm in arms if not weights.empty else []:
        sub = weights[weights.arm == arm]
        if sub.empty:
            continue
        hist = sub.groupby(["bin_left", "bin_right"])["count"].sum().sort_index()
        edges = np.append(hist.index.get_level_values(0), hist.index.get_level_values(1)[-1])
        counts = hist.to_numpy(dtype=float)
        if counts.sum() == 0 or counts[:-1].sum() == 0:  # every weight in the last bin: no reweighting
            continue
        ax.stairs(counts / counts.sum(), edges, color=colors[arm], lw=1.6, label=f"{arm} ({int(counts.sum())} tokens)")
        drawn, lowest = True, min(lowest, edges[np.flatnonzero(counts)[0]])
    if not drawn:
        return None
    ax.set_yscale("log")
    ax.set_xlim(max(0.0, lowest - 0.05), 1.01)
    ax.set(xlabel="token weight w_t in the loss (steer_weight)", ylabel="share of tokens (log scale)")
    ax.set_title("STEER token weights, all steps and seeds")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, "arm (tokens)")


def omega_entropy_points(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run and step t: ``omega`` (``steer/omega_mean`` of the update at t) and ``delta_entropy``
    (``rollout/entropy`` at t+1 minus at t); empty when a run lacks either metric."""
    frames = []
    for (arm, seed), run in metrics.groupby(["arm", "seed"], sort=False):
        omega = run[run.key == OMEGA].groupby("step")["value"].last()
        ent = run[run.key == ENTROPY].groupby("step")["value"].last().sort_index()
        delta = (ent.shift(-1) - ent).dropna()  # realized change over the update at step t
        both = pd.concat({"omega": omega, "delta_entropy": delta}, axis=1, join="inner").dropna()
        if not both.empty:
            frames.append(both.assign(arm=arm, seed=seed).reset_index(names="step"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot_omega_vs_entropy(metrics: pd.DataFrame, path: Path, arms: list[str]) -> Path | None:
    """Predicted vs realized entropy change per step; None with fewer than two points in all."""
    points = omega_entropy_points(metrics)
    if len(points) < 2:
        return None
    fig = Figure(figsize=(8, 4.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    colors = arm_colors(arms)
    for arm in arms:
        sub = points[points.arm == arm]
        if sub.empty:
            continue
        r = sub.omega.corr(sub.delta_entropy) if len(sub) >= 3 else math.nan
        label = f"{arm} ({r:+.2f})" if math.isfinite(r) else f"{arm} (n/a)"
        ax.scatter(sub.omega, sub.delta_entropy, s=18, color=colors[arm], alpha=0.8, label=label)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set(
        xlabel="mean Omega of the update at step t (predicted; > 0 raises H)",
        ylabel="rollout entropy at t+1 minus at t",
        title="Predicted vs realized entropy change per step",
    )
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, "arm (Pearson r, from 3 points)")


def render_report(
    metrics: pd.DataFrame, weights: pd.DataFrame | None, out_dir: str | Path, arms: list[str] | None = None
) -> Report:
    """Write the PNGs, ``summary.csv`` (per arm), ``runs.csv`` (per run) and ``summary.md`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = arms or list(dict.fromkeys(metrics.arm))
    if weights is None:
        weights = pd.DataFrame(columns=["arm", "seed", "bin_left", "bin_right", "count"])
    table = summary_table(metrics, arms)
    report = Report(table=table, markdown=table_markdown(table))
    plots = {
        "entropy": lambda p: plot_curve(
            metrics,
            ENTROPY,
            "token-mean entropy of the rollout policy (nats)",
            "Entropy vs step (rollout/entropy)",
            p,
            arms,
            smooth=True,
        ),
        "accuracy": lambda p: plot_curve(
            metrics, "eval/accuracy", "held-out accuracy", "Held-out accuracy vs step (eval/accuracy)", p, arms
        ),
        "quadrants": lambda p: plot_quadrants(metrics, p, arms),
        "steer_weights": lambda p: plot_weight_histogram(weights, p, arms),
        "omega_vs_entropy": lambda p: plot_omega_vs_entropy(metrics, p, arms),
    }
    reasons = {
        "entropy": f"no run logged {ENTROPY}",
        "accuracy": "no run logged eval/accuracy",
        "quadrants": "no run logged steer/quadrant/*/share",
        "steer_weights": "no arm has token weights other than 1 (or no weight histograms were found)",
        "omega_vs_entropy": f"fewer than two steps with both {OMEGA} and a next-step {ENTROPY}",
    }
    for name, draw in plots.items():
        path = draw(out / f"{name}.png")
        if path is None:
            report.skipped[name] = reasons[name]
        else:
            report.files[name] = path
    table.to_csv(out / "summary.csv", index=False)
    run_summaries(metrics).to_csv(out / "runs.csv", index=False)
    (out / "summary.md").write_text(report.markdown + "\n")
    report.files.update(summary_csv=out / "summary.csv", runs_csv=out / "runs.csv", summary_md=out / "summary.md")
    return report
