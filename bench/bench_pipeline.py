"""Where a training step's wall time goes on the embedded default: model compute vs the pipeline around it.

Runs the real flow (Prefect, MLflow, Parquet) for a few steps and reads the per-phase timings the flow logs
(`timing/*`). "Outside model compute" is the step's wall time minus sampling, scoring and the update: Prefect's task
orchestration, the Parquet write, MLflow logging and checkpoints. Goal: <= 10% of a step.

    .venv/bin/python bench/bench_pipeline.py [--steps 6] [--preset tiny]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    from mlflow.tracking import MlflowClient

    from flows.train import train
    from steer.config import load_config

    out = Path(tempfile.mkdtemp(prefix="bench-pipeline-")) / "run"
    # evaluation off between start and end; checkpoints at the preset's cadence stay in
    cfg = load_config(args.preset, {"steps": args.steps, "output_dir": str(out), "eval": {"every": 0}})
    t0 = time.perf_counter()
    summary = train(cfg)
    total = time.perf_counter() - t0
    client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])

    def history(key: str):
        return sorted(client.get_metric_history(summary["mlflow_run_id"], key), key=lambda m: m.step)

    def series(key: str) -> list[float]:
        return [m.value for m in history(key)]

    phases = ["rollout", "score", "update", "persist"]
    # the first step pays one-off costs (MLflow schema, Prefect task registration): report steps 2..n
    per = {p: series(f"timing/{p}")[1:] for p in phases}
    # the true period of a step: between the times its metrics and the next step's were logged, so it includes the
    # metric logging, checkpoints and Prefect's task bookkeeping that timing/step cannot see
    stamps = [m.timestamp / 1e3 for m in history("timing/step")]
    period = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    per = {p: v[: len(period)] for p, v in per.items()}
    step = series("timing/step")[1 : 1 + len(period)]
    model = [r + u for r, u in zip(per["rollout"], per["update"], strict=True)]
    outside = [t - m - sc for t, m, sc in zip(period, model, per["score"], strict=True)]
    print(f"preset={args.preset}, {args.steps} steps, flow wall time {total:.1f} s (incl. setup and evaluations)")
    print(f"{'phase':<28}{'median s':>10}{'share':>8}")
    med_step = statistics.median(step)
    for p in phases:
        print(f"{p:<28}{statistics.median(per[p]):>10.3f}{statistics.median(per[p]) / med_step:>8.1%}")
    print(f"{'step (timing/step)':<28}{med_step:>10.3f}")
    print(f"{'step period (log to log)':<28}{statistics.median(period):>10.3f}")
    share = statistics.median(o / t for o, t in zip(outside, period, strict=True))
    print(f"outside model compute and scoring (Prefect + Parquet + MLflow + checkpoints): {share:.1%} of a step")


if __name__ == "__main__":
    main()
