"""How well does Omega predict the entropy change of one real optimizer step? (the paper's Table 1 protocol)

method.md, "Measuring the estimator": take a rollout batch, record H at every response state, take one real
optimizer step, recompute H at the same states, and compare the realized change with each estimator by MSE, Pearson
and Spearman correlation. Equations: docs/algorithms.md, section "Entropy-change estimators".

Pieces, torch and pandas only:

- ``ENTROPY_CHANGE_ESTIMATORS``: per-token predictions (N, T), zero on padding: ``first_order`` and ``released``
  (Theorem 1's two forms, ``steer.reweighting.estimate_entropy_change``), ``covariance`` (Cui et al. 2025's
  softmax policy-gradient estimate, dH ~ -Cov(log pi, pi A), per token) and ``covariance_npg`` (its natural-PG form,
  the per-token covariance Clip-Cov and KL-Cov rank by).
- ``OPTIMIZERS``: ``sgd`` (no momentum) and ``adamw`` (weight decay 0, fresh state: its first step is
  lr * g / (|g| + eps), i.e. lr * sign(g) for every weight whose gradient is not tiny).
- ``score_states``: log p and H at every response state, deterministic (eval mode, a fixed micro-batch split), so
  that the states before and after the step are scored by exactly the same computation.
- ``entropy_change_step``: one optimizer step of the plain clipped GRPO objective on a copy of the policy (the caller's
  model is not touched), then the entropies after it.
- ``token_frame`` / ``estimator_table``: the per-token table (one row per valid token, rollout batch and optimizer
  cell) and the statistics per (stage, rollout batch, optimizer cell, estimator, subset).
- ``summary_table``: per (stage, optimizer cell, estimator, subset), the mean over rollout batches and the half-width
  of its 95% Student-t interval (``steer.comparison.summary.t_interval``) of pearson, spearman and mse / mse_zero.

Departure from the protocol as the paper states it: the step is taken in eval mode (no dropout), so the realized
change comes from the parameters alone and lr = 0 realizes exactly 0; the predicted gradient is the dropout-free one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from steer import choices
from steer.algorithms import AlgorithmConfig, NoShaping, NoWeighting, PpoClipLoss
from steer.batch import PolicyBatch
from steer.comparison.summary import t_interval
from steer.objective import build_objective
from steer.ops import masked_mean, token_advantages
from steer.registry import Registry
from steer.reweighting import QUADRANTS, estimate_entropy_change, quadrant_masks
from steer.scoring import score_batch
from steer.studies.stats import fit_scale_mse, pearson, sign_agreement, spearman
from steer.update import policy_update

ENTROPY_CHANGE_ESTIMATORS: Registry = Registry("entropy-change estimator")
OPTIMIZERS: Registry[Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]] = Registry(
    "optimizer", choices.OPTIMIZERS
)

SUBSETS = ("all", *QUADRANTS, "all_with_zero_adv", "states")
"""Subsets of the table: ``all`` (valid tokens with A != 0), the four quadrants of method.md, every valid token
(``all_with_zero_adv``: tokens with A = 0 are predicted not to move, but they do), and ``states``: one point per
distinct state holding a token with A != 0, its prediction the sum over those tokens (the G samples of a prompt share
their first states, so one realized change answers several tokens' predictions; to first order they add)."""

CELL_KEYS = ["stage", "checkpoint_step", "optimizer", "lr"]
"""One optimizer cell at one stage: the summary's rows (with estimator and subset), pooling the rollout batches."""
BATCH_KEYS = ["stage", "checkpoint_step", "batch", "optimizer", "lr"]
"""One optimizer cell's step on one rollout batch: the estimator table's and the cell table's rows."""
TABLE_COLUMNS = [
    *BATCH_KEYS,
    "estimator",
    "subset",
    "n",
    "pearson",
    "spearman",
    "scale",
    "mse",
    "mse_zero",
    "sign_agreement",
]
SUMMARY_STATS = ("pearson", "spearman", "mse_ratio")
"""The summary's statistics over batches; ``mse_ratio`` = mse / mse_zero of a batch (below 1: better than predicting
no change)."""
SUMMARY_COLUMNS = [
    *CELL_KEYS,
    "estimator",
    "subset",
    "batches",
    "n",
    *(c for s in SUMMARY_STATS for c in (s, f"{s}_ci")),
]


# --------------------------------------------------------------------------------------------------- estimators
@ENTROPY_CHANGE_ESTIMATORS.register("first_order")
def first_order(logp, old_logp, entropy, old_entropy, advantages, mask, *, eps_low, eps_high) -> Tensor:
    """Theorem 1: -I_clip A r p(1-p)(log p + H), H under the current policy. (N, T)."""
    return estimate_entropy_change(
        logp, old_logp, entropy, advantages, mask, form="first_order", eps_low=eps_low, eps_high=eps_high
    )


@ENTROPY_CHANGE_ESTIMATORS.register("released")
def released(logp, old_logp, entropy, old_entropy, advantages, mask, *, eps_low, eps_high) -> Tensor:
    """The released code: -(A / p_old) p(1-p)(log p + H_old). (N, T)."""
    return estimate_entropy_change(
        logp, old_logp, old_entropy, advantages, mask, form="released", eps_low=eps_low, eps_high=eps_high
    )


@ENTROPY_CHANGE_ESTIMATORS.register("covariance")
@torch.no_grad()
def covariance(logp, old_logp, entropy, old_entropy, advantages, mask, *, eps_low, eps_high) -> Tensor:
    """Cui et al. 2025 (softmax policy gradient): dH ~ -Cov(log pi, pi A), one term per token:
    -(log p - mean log p)(p A - mean(p A)), means over the batch's valid tokens (A = 0 included). (N, T)."""
    valid = mask.bool()
    adv = token_advantages(advantages, logp).to(logp.dtype)
    pa = logp.exp() * adv  # (N, T)
    cov = (logp - masked_mean(logp, valid)) * (pa - masked_mean(pa, valid))  # (N, T)
    return torch.where(valid, -cov, torch.zeros_like(cov))


@ENTROPY_CHANGE_ESTIMATORS.register("covariance_npg")
@torch.no_grad()
def covariance_npg(logp, old_logp, entropy, old_entropy, advantages, mask, *, eps_low, eps_high) -> Tensor:
    """Cui et al. 2025 (natural policy gradient): dH ~ -Cov(log pi, A), one term per token:
    -(log p - mean log p)(A - mean A), the negated per-token covariance Clip-Cov ranks by. (N, T)."""
    valid = mask.bool()
    adv = token_advantages(advantages, logp).to(logp.dtype)
    cov = (logp - masked_mean(logp, valid)) * (adv - masked_mean(adv, valid))  # (N, T)
    return torch.where(valid, -cov, torch.zeros_like(cov))


def predict(
    names: Sequence[str], logp, old_logp, entropy, old_entropy, advantages, mask, *, eps_low: float, eps_high: float
) -> dict[str, Tensor]:
    """Every estimator in ``names`` on the same tensors: name -> (N, T), zeros on padding, detached."""
    args = (logp.detach(), old_logp, entropy.detach(), old_entropy, advantages, mask)
    return {n: ENTROPY_CHANGE_ESTIMATORS.get(n)(*args, eps_low=eps_low, eps_high=eps_high) for n in names}


# --------------------------------------------------------------------------------------------------- optimizers
@OPTIMIZERS.register("sgd")
def _sgd(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.0)


@OPTIMIZERS.register("adamw")
def _adamw(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def plain_objective(cfg: AlgorithmConfig) -> AlgorithmConfig:
    """The objective whose entropy change Omega predicts: the clipped per-token loss of ``cfg`` (its clip range,
    dual clip and aggregation kept) with no token weights, advantage shaping, entropy bonus or KL term."""
    return cfg.model_copy(
        update=dict(
            policy_loss=PpoClipLoss(),
            token_weighting=NoWeighting(),
            advantage_shaping=NoShaping(),
            entropy_coef=0.0,
            kl_coef=0.0,
        )
    )


# ------------------------------------------------------------------------------------------------- the step
def _micro(n: int, micro_batch_size: int) -> int:
    """The largest size <= ``micro_batch_size`` that splits n rows evenly (a gcd): before and after use the same."""
    return math.gcd(n, micro_batch_size)


@torch.no_grad()
def score_states(
    model: torch.nn.Module,
    batch: PolicyBatch,
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """log p and H (N, T) of every response state, in eval mode with the micro-batch split ``entropy_change_step``
    uses, so that equal parameters give bitwise equal entropies. The model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return score_batch(
            model,
            batch,
            micro_batch_size=_micro(len(batch), micro_batch_size),
            temperature=temperature,
            autocast_dtype=autocast_dtype,
        )
    finally:
        model.train(was_training)


@dataclass
class StepResult:
    """One optimizer cell's step: the states re-scored after it, and the update's metrics."""

    optimizer: str
    lr: float
    logp_after: Tensor  # (N, T)
    entropy_after: Tensor  # (N, T)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return cell_label(self.optimizer, self.lr)


def cell_label(optimizer: str, lr: float) -> str:
    """``sgd_0.1``, ``adamw_1e-05``: an optimizer cell's name in metric names and file names."""
    return f"{optimizer}_{lr:g}"


def entropy_change_step(
    model: torch.nn.Module,
    batch: PolicyBatch,
    algorithm_cfg: AlgorithmConfig,
    *,
    optimizer: str,
    lr: float,
    micro_batch_size: int,
    temperature: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> StepResult:
    """Exactly one optimizer step on the whole ``batch`` from a copy of ``model``, then H at the same states.

    Args:
        batch: N responses with ``old_logp``/``old_entropy`` from ``score_states`` on ``model`` (the rollout policy).
        algorithm_cfg: its clip range, dual clip and aggregation define the step (``plain_objective``).
        optimizer: a name in ``OPTIMIZERS``; built fresh, so AdamW has no moment history.
        lr: the step size; no gradient clipping (max norm inf) and no schedule, so lr is the step size.
        micro_batch_size: gradient accumulation and scoring chunk (rounded down to a divisor of N).
    Returns:
        ``StepResult`` with ``entropy_after`` and ``logp_after`` (N, T), zeros on padding, and the update's
        metrics (``actor/grad_norm``, ``actor/clipfrac``, ...) plus ``param_delta_norm`` = ||theta' - theta||.
    """
    if batch.old_logp is None or batch.old_entropy is None:
        raise ValueError("batch.old_logp / old_entropy are missing: score the batch with score_states() first")
    n = len(batch)
    micro = _micro(n, micro_batch_size)
    policy = copy.deepcopy(model)
    policy.eval()  # no dropout: the realized change comes from the parameters alone
    opt = OPTIMIZERS.get(optimizer)(policy.parameters(), lr)
    result = policy_update(
        policy,
        opt,
        batch,
        build_objective(plain_objective(algorithm_cfg)),
        mini_batch_size=n,
        micro_batch_size=micro,
        epochs=1,
        temperature=temperature,
        max_grad_norm=math.inf,
        generator=torch.Generator().manual_seed(0),
        autocast_dtype=autocast_dtype,
        shuffle=False,
    )
    logp_after, entropy_after = score_states(
        policy, batch, micro_batch_size=micro, temperature=temperature, autocast_dtype=autocast_dtype
    )
    with torch.no_grad():
        delta = sum(((a.float() - b.float()) ** 2).sum() for a, b in zip(policy.parameters(), model.parameters()))
    metrics = {**result.metrics, "param_delta_norm": float(delta) ** 0.5}
    del policy, opt
    return StepResult(optimizer, lr, logp_after, entropy_after, metrics)


# ------------------------------------------------------------------------------------------------- the tables
@torch.no_grad()
def state_ids(batch: PolicyBatch) -> Tensor:
    """(N, T) long: equal exactly where two response tokens are sampled at the same state s_t (the same prompt and
    the same earlier response tokens), e.g. t = 0 for all G samples of a prompt. Ids are t * N + (prefix id < N)."""
    n, t_max = batch.response_mask.shape
    _, prefix = torch.unique(batch.input_ids[:, : batch.prompt_len], dim=0, return_inverse=True)  # (N,) prompt id
    out = torch.empty(n, t_max, dtype=torch.long, device=prefix.device)
    for t in range(t_max):
        out[:, t] = t * n + prefix
        pair = torch.stack([prefix, batch.response_ids[:, t]], dim=1)  # (N, 2): the state and its sampled token
        _, prefix = torch.unique(pair, dim=0, return_inverse=True)  # (N,) id of the prefix through token t
    return out


def token_frame(
    batch: PolicyBatch,
    predictions: dict[str, Tensor],
    steps: Sequence[StepResult],
    *,
    stage: str,
    checkpoint_step: int,
    batch_index: int = 0,
) -> pd.DataFrame:
    """One row per valid token and optimizer cell (columns as ``docs/algorithms.md`` lists them; ``state`` is
    ``state_ids``: equal for tokens sampled at the same state of this batch).

    Args:
        batch: the scored batch; ``old_logp``/``old_entropy`` are log p and H before the step (N, T).
        predictions: estimator name -> (N, T), as ``predict`` returns; column ``pred_<name>``.
        steps: the cells' results on this batch.
        batch_index: which of the stage's rollout batches this is (column ``batch``; ``row`` and ``state`` are
            within it).
    """
    batch = batch.to("cpu")
    valid = batch.response_mask.bool()
    rows, ts = valid.nonzero(as_tuple=True)  # (M,), (M,): the valid tokens, row-major
    adv = token_advantages(batch.advantages, batch.old_logp)
    quadrant = np.full(rows.numel(), "zero", dtype=object)
    for q, m in quadrant_masks(batch.old_logp, batch.old_entropy, adv, batch.response_mask).items():
        quadrant[m[valid].numpy()] = q
    before = batch.old_entropy[valid]  # (M,)
    base = {
        "row": rows.numpy(),
        "t": ts.numpy(),
        "state": state_ids(batch)[valid].numpy(),
        "advantage": adv[valid].double().numpy(),
        "logp": batch.old_logp[valid].double().numpy(),
        "entropy_before": before.double().numpy(),
    }
    preds = {f"pred_{k}": v.cpu()[valid].double().numpy() for k, v in predictions.items()}
    frames = []
    for s in steps:
        after = s.entropy_after.cpu()[valid]  # (M,)
        frames.append(
            pd.DataFrame(
                {
                    "stage": stage,
                    "checkpoint_step": checkpoint_step,
                    "batch": batch_index,
                    "optimizer": s.optimizer,
                    "lr": s.lr,
                    **base,
                    "entropy_after": after.double().cpu().numpy(),
                    "realized": (after - before)
                    .double()
                    .cpu()
                    .numpy(),  # in the scoring dtype: exactly 0 when unchanged
                    "quadrant": quadrant,
                    **preds,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def estimator_names(frame: pd.DataFrame) -> list[str]:
    """The estimators a token frame holds (its ``pred_<name>`` columns, in order)."""
    return [c.removeprefix("pred_") for c in frame.columns if c.startswith("pred_")]


def subset_mask(frame: pd.DataFrame, subset: str) -> np.ndarray:
    """Bool (rows,) of ``frame``'s tokens in ``subset`` (one of ``SUBSETS``; ``states`` selects the tokens of
    ``all``, which ``subset_values`` then sums per state)."""
    if subset in ("all", "states"):
        return (frame["advantage"] != 0).to_numpy()
    if subset == "all_with_zero_adv":
        return np.ones(len(frame), dtype=bool)
    if subset in QUADRANTS:
        return (frame["quadrant"] == subset).to_numpy()
    raise KeyError(f"unknown subset {subset!r}; valid names: {', '.join(SUBSETS)}")


def subset_values(cell: pd.DataFrame, pred_column: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, realized change) of one optimizer cell's ``subset``, (n,) each: per token, or for ``states``
    per distinct state (the sum of its tokens' predictions, and the state's change)."""
    rows = cell[subset_mask(cell, subset)]
    if subset != "states":
        return rows[pred_column].to_numpy(), rows["realized"].to_numpy()
    per_state = rows.groupby("state", sort=False).agg(pred=(pred_column, "sum"), real=("realized", "mean"))
    return per_state["pred"].to_numpy(), per_state["real"].to_numpy()


def agreement(pred: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """The table's statistics of one estimator on one subset (n,): n, pearson, spearman, scale, mse, mse_zero,
    sign_agreement."""
    scale, mse = fit_scale_mse(pred, real)
    return {
        "n": int(pred.size),
        "pearson": pearson(pred, real),
        "spearman": spearman(pred, real),
        "scale": scale,
        "mse": mse,
        "mse_zero": float(np.mean(real**2)) if real.size else float("nan"),
        "sign_agreement": sign_agreement(pred, real),
    }


def estimator_table(frame: pd.DataFrame, subsets: Sequence[str] = SUBSETS) -> pd.DataFrame:
    """Statistics of every estimator against the realized change, per (stage, checkpoint_step, batch, optimizer,
    lr), estimator and subset: rows = stages x batches x cells x estimators x subsets, columns ``TABLE_COLUMNS``.

    ``n`` counts tokens (states for ``states``); ``scale`` is the least-squares c of c * pred ~ realized on that
    subset and ``mse`` the MSE after it; ``mse_zero`` = mean(realized^2) is the MSE of predicting no change.
    """
    names = estimator_names(frame)
    out = []
    for key, cell in frame.groupby(BATCH_KEYS, sort=False):
        for name in names:
            for subset in subsets:
                pred, real = subset_values(cell, f"pred_{name}", subset)
                out.append({**dict(zip(BATCH_KEYS, key)), "estimator": name, "subset": subset, **agreement(pred, real)})
    return pd.DataFrame(out, columns=TABLE_COLUMNS)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """The estimator table over rollout batches: one row per (stage, optimizer cell, estimator, subset), columns
    ``SUMMARY_COLUMNS``. ``batches`` counts the table's rows of the group, ``n`` is their mean n; ``<stat>`` is the
    mean over the batches where the statistic is defined and ``<stat>_ci`` the half-width of its 95% Student-t
    interval, t_{0.975, k-1} s / sqrt(k) over those k batches (NaN when k < 2)."""
    keys = [*CELL_KEYS, "estimator", "subset"]
    per_batch = table.assign(mse_ratio=table["mse"] / table["mse_zero"])
    out = []
    for key, rows in per_batch.groupby(keys, sort=False):
        rec = {**dict(zip(keys, key)), "batches": len(rows), "n": float(rows["n"].mean())}
        for stat in SUMMARY_STATS:
            rec[stat], rec[f"{stat}_ci"] = t_interval(rows[stat].tolist())
        out.append(rec)
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def mean_ci(mean: float, ci: float, digits: int = 3) -> str:
    """``0.412 ± 0.031``; the mean alone when the interval is undefined (one batch), ``nan`` when the mean is."""
    if math.isnan(mean):
        return "nan"
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def summary_markdown(summary: pd.DataFrame, subsets: Sequence[str] = ("all", "states")) -> str:
    """The summary's ``subsets`` rows as a GitHub markdown table, each statistic one "mean ± ci" cell."""
    rows = summary[summary["subset"].isin(subsets)]
    head = [*CELL_KEYS, "estimator", "subset", "batches", "n", "pearson", "spearman", "mse / mse_zero"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows.to_dict("records"):
        cells = [
            str(r["stage"]),
            str(r["checkpoint_step"]),
            r["optimizer"],
            f"{r['lr']:g}",
            r["estimator"],
            r["subset"],
            str(r["batches"]),
            f"{r['n']:.0f}",
            *(mean_ci(r[s], r[f"{s}_ci"]) for s in SUMMARY_STATS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """``table`` as a GitHub markdown table; floats in 4 significant digits, correlations with ``digits`` decimals."""

    def fmt(col: str, v) -> str:
        if isinstance(v, float | np.floating):
            if math.isnan(v):
                return "nan"
            return f"{v:.{digits}f}" if col in ("pearson", "spearman", "sign_agreement") else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    for rec in table.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(c, v) for c, v in zip(table.columns, rec)) + " |")
    return "\n".join(lines) + "\n"


def cell_table(frame: pd.DataFrame, step_metrics: Sequence[dict]) -> pd.DataFrame:
    """One row per (stage, rollout batch, optimizer cell): how far the step moved the entropy and whether it was
    still first-order.

    Columns: ``BATCH_KEYS``, ``mean_abs_realized`` and ``mean_realized`` (over valid tokens), ``nonlinearity`` =
    ||d/lr - d0/lr0|| / ||d0/lr0|| with d the realized change per token and d0 that of the smallest positive lr of the
    same optimizer at the same stage and batch (about 0 in the first-order regime, about 1 when the step is far beyond
    it; NaN for the reference cell itself and for lr = 0), and ``param_delta_norm``, ``grad_norm``, ``clipfrac`` from
    ``step_metrics`` (one dict per cell and batch with the ``BATCH_KEYS`` and ``StepResult.metrics``).
    """
    extra = {tuple(m[k] for k in BATCH_KEYS): m for m in step_metrics}
    rows = []
    for (stage, step, b, opt), group in frame.groupby(["stage", "checkpoint_step", "batch", "optimizer"], sort=False):
        per_lr = {lr: cell["realized"].to_numpy() for lr, cell in group.groupby("lr", sort=False)}
        positive = sorted(lr for lr in per_lr if lr > 0)
        ref = per_lr[positive[0]] / positive[0] if positive else None
        for lr, d in per_lr.items():
            nonlin = float("nan")
            if ref is not None and lr > positive[0] and np.linalg.norm(ref) > 0:
                nonlin = float(np.linalg.norm(d / lr - ref) / np.linalg.norm(ref))
            m = extra.get((stage, step, b, opt, lr), {})
            rows.append(
                {
                    "stage": stage,
                    "checkpoint_step": step,
                    "batch": b,
                    "optimizer": opt,
                    "lr": lr,
                    "mean_abs_realized": float(np.abs(d).mean()),
                    "mean_realized": float(d.mean()),
                    "nonlinearity": nonlin,
                    "param_delta_norm": m.get("param_delta_norm", float("nan")),
                    "grad_norm": m.get("actor/grad_norm", float("nan")),
                    "clipfrac": m.get("actor/clipfrac", float("nan")),
                }
            )
    return pd.DataFrame(rows)
