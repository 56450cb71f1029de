"""STEER's mean weight under each normaliser, recomputed from a run's persisted Omega (issue 15, docs/results.md).

    .venv/bin/python bench/bench_normaliser_weights.py runs/cli15/steer_paper/rollouts [--lambda-min 0.7]

Reads the per-token Omega of every step in the Parquet rollouts (the values the loss saw), shuffles each step's
responses (seeded, as the update's mini-batches are) and prints, per normaliser, the mean and 10th percentile of the
weights exp(ln(lambda_min) |Omega| / M) and the share of tokens below 0.95: M = max over the rollout, over groups
of 64 sequences (the old micro-batch default), over groups of 8 (``group``), and quantiles of |Omega| over groups
of 8 (``group_quantile``).
"""

from __future__ import annotations

import argparse

import torch

from steer.normalisers import group_reduce
from steer.reweighting import steer_weights
from steer.rollout_store import read_rollouts


def padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(r) for r in rows)
    x = torch.zeros(len(rows), t)
    m = torch.zeros(len(rows), t)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
        m[i, : len(r)] = 1.0
    return x, m  # (N, T) each


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rollouts")
    p.add_argument("--lambda-min", type=float, default=0.7)
    args = p.parse_args()
    table = read_rollouts(args.rollouts).to_pandas()
    scopes = [("rollout max", None, None), ("max over 64", 64, None), ("group max over 8", 8, None)]
    scopes += [(f"group quantile {q} over 8", 8, q) for q in (0.99, 0.95, 0.9, 0.75)]
    stats: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in scopes}
    gen = torch.Generator().manual_seed(0)
    for _, step in table.groupby("step"):
        omega, mask = padded(list(step["omega"]))
        perm = torch.randperm(len(omega), generator=gen)
        omega, mask = omega[perm], mask[perm]
        for name, group, q in scopes:
            m = group_reduce(omega, mask, group or len(omega), q).repeat_interleave(group or len(omega))
            w = steer_weights(omega, mask, lambda_min=args.lambda_min, max_abs=m[: len(omega), None])
            stats[name].append(w[mask.bool()])
    print(f"{'normaliser':28s} {'mean w':>8s} {'p10 w':>8s} {'share w<0.95':>13s}")
    for name, ws in stats.items():
        w = torch.cat(ws)
        print(f"{name:28s} {w.mean():8.4f} {w.quantile(0.1):8.4f} {(w < 0.95).float().mean():13.4f}")


if __name__ == "__main__":
    main()
