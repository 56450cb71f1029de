"""Agreement statistics between a predicted and a realized per-token change, in float64 numpy.

The paper's Table 1 protocol (method.md, "Measuring the estimator") compares an estimator with the realized entropy
change by MSE and by Pearson and Spearman correlation. Every function takes two 1-D arrays of the same length n
(one value per token) and returns plain floats; a statistic that is undefined (fewer than 2 points, a constant input)
is NaN rather than an error, so a sparse quadrant leaves a gap in the table instead of failing the study.

- ``pearson``, ``spearman``: as ``scipy.stats.pearsonr`` / ``spearmanr`` (ties get average ranks, as
  ``scipy.stats.rankdata(method="average")``), without scipy's warnings.
- ``fit_scale_mse``: the least-squares scale through the origin c = <pred, real> / <pred, pred> and the MSE of
  c * pred. Estimators differ by an unknown positive factor (eta / L for Theorem 1 under SGD, nothing exact under
  AdamW or for the covariance proxies), so MSE compares them after each gets its best scale.
- ``sign_agreement``: how often the estimator gets the direction right.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    return x, y


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of x (n,) and y (n,); NaN when n < 2 or either input is constant."""
    x, y = _pair(x, y)
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if denom == 0 or not np.isfinite(denom):
        return float("nan")
    return float(np.clip((dx * dy).sum() / denom, -1.0, 1.0))


def rankdata(x: ArrayLike) -> np.ndarray:
    """1-based ranks of x (n,), ties sharing the average of their ranks (scipy's ``method="average"``): (n,)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")  # (n,)
    xs = x[order]
    starts_group = np.r_[True, xs[1:] != xs[:-1]]  # (n,): first element of each run of equal values
    group = np.cumsum(starts_group) - 1  # (n,) group id of each sorted position
    first = np.flatnonzero(starts_group)  # (K,) 0-based start of each group
    last = np.r_[first[1:], x.size] - 1  # (K,) 0-based end of each group
    ranks = np.empty(x.size)
    ranks[order] = ((first + last) / 2.0 + 1.0)[group]
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation of x (n,) and y (n,) (Pearson of average ranks); NaN when n < 2 or either input
    is constant."""
    x, y = _pair(x, y)
    return pearson(rankdata(x), rankdata(y))


def fit_scale_mse(pred: ArrayLike, real: ArrayLike) -> tuple[float, float]:
    """Best scale c of ``pred`` (n,) for ``real`` (n,) through the origin, and mean((c * pred - real)^2).

    c = <pred, real> / <pred, pred>. When pred is all zero, c is NaN and the MSE is mean(real^2) (predicting no
    change); with n = 0 both are NaN.
    """
    pred, real = _pair(pred, real)
    if pred.size == 0:
        return float("nan"), float("nan")
    pp = float((pred * pred).sum())
    if pp == 0:
        return float("nan"), float((real * real).mean())
    c = float((pred * real).sum()) / pp
    return c, float(((c * pred - real) ** 2).mean())


def sign_agreement(pred: ArrayLike, real: ArrayLike) -> float:
    """Share of tokens where sign(pred) == sign(real), over the tokens where both are nonzero (n,); NaN if none."""
    pred, real = _pair(pred, real)
    both = (pred != 0) & (real != 0)
    if not both.any():
        return float("nan")
    return float((np.sign(pred[both]) == np.sign(real[both])).mean())
