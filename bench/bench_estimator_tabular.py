"""How well does each Omega form rank the realized entropy change in a tabular softmax policy?

Two settings (steer.tabular): the theorem's own (only the sampled logit moves; first-order should be exact up to
O(eta^2)) and the full softmax gradient (every logit of the state moves; outside the theorem). For each we print
Pearson and Spearman correlations of (eta/L) * Omega with the realized change, and the MSE. A diagnostic, not a test.

    .venv/bin/python bench/bench_estimator_tabular.py [--states 2000 --vocab 32 --eta 2.0 --seeds 3]
"""

import argparse

import numpy as np
from scipy import stats

from steer.tabular import random_tabular_problem, tabular_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--eta", type=float, default=2.0)
    ap.add_argument("--drift", type=float, default=0.3, help="std of the current-vs-rollout logit drift")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"S={args.states} states, V={args.vocab}, eta={args.eta} (eta/L={args.eta / args.states:.2e}), "
        f"drift={args.drift}, {args.seeds} seeds; mean over seeds"
    )
    print(f"{'setting':<14} {'form':<12} {'pearson':>8} {'spearman':>9} {'mse':>10}")
    for sampled_only, label in [(True, "sampled-only"), (False, "full-grad")]:
        rows: dict[str, list] = {"first_order": [], "released": []}
        for seed in range(args.seeds):
            cur, old, actions, adv = random_tabular_problem(args.states, args.vocab, seed=seed, drift=args.drift)
            step = tabular_step(cur, old, actions, adv, eta=args.eta, sampled_only=sampled_only)
            real = step.realized.numpy()
            for form, omega in [("first_order", step.omega_first_order), ("released", step.omega_released)]:
                pred = (step.scale * omega).numpy()
                rows[form].append(
                    (stats.pearsonr(pred, real)[0], stats.spearmanr(pred, real)[0], float(np.mean((pred - real) ** 2)))
                )
        for form, vals in rows.items():
            p, s, m = np.mean(vals, axis=0)
            print(f"{label:<14} {form:<12} {p:8.3f} {s:9.3f} {m:10.2e}")


if __name__ == "__main__":
    main()
