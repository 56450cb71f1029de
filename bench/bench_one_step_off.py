"""Wall time per step, one-step-off vs the synchronous loop, with the CPU vLLM worker (``make vllm-venv``).

Runs the real training flow (Prefect, MLflow, Parquet) on the tiny policy with ``rollout.backend=vllm``, once per
mode and repeat, modes alternating, and reads the per-step timings it logs. Step 0 (nothing sampled ahead) and the
last step (nothing to sample ahead) are left out of the per-step medians; the loop's wall time is the sum of
``timing/step`` over all steps. On 2 cores shared with other jobs the trainer and the worker compete for the same
cores, so the overlap gains only what one side leaves idle; the load average is printed with the numbers.

    .venv/bin/python bench/bench_one_step_off.py [--steps 8] [--repeats 1] [--preset tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

KEYS = ("timing/step", "timing/rollout", "timing/update", "timing/rollout_wait", "timing/weight_sync")


def run(preset: str, steps: int, one_step_off: bool) -> dict[str, list[float]]:
    from mlflow.tracking import MlflowClient

    from flows.train import train
    from steer.config import load_config

    out = Path(tempfile.mkdtemp(prefix="bench-osf-")) / "run"
    cfg = load_config(
        preset,
        {
            "steps": steps,
            "output_dir": str(out),
            "eval": {"every": 0},
            "checkpoint_every": 0,
            "rollout": {"backend": "vllm", "one_step_off": one_step_off},
            "tracking": {"log_model": False, "system_metrics": False},
        },
    )
    summary = train(cfg)
    client = MlflowClient(tracking_uri=summary["mlflow_tracking_uri"])
    series = {}
    for key in KEYS:
        history = sorted(client.get_metric_history(summary["mlflow_run_id"], key), key=lambda m: m.step)
        series[key] = [m.value for m in history]
    return series


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    results: dict[bool, list[dict[str, list[float]]]] = {False: [], True: []}
    for r in range(args.repeats):
        for mode in (False, True) if r % 2 == 0 else (True, False):
            results[mode].append(run(args.preset, args.steps, mode))
            print(f"repeat {r} one_step_off={mode}: load average {os.getloadavg()}")
    medians = {}
    for mode, runs in results.items():
        name = "one-step-off" if mode else "synchronous"
        middle = {k: [v for s in runs for v in s[k][1:-1]] for k in KEYS if all(s[k] for s in runs)}
        loop = statistics.median(sum(s["timing/step"]) for s in runs)
        medians[mode] = statistics.median(middle["timing/step"])
        parts = ", ".join(f"{k.split('/')[1]} {statistics.median(v):.3f}" for k, v in middle.items())
        print(f"{name}: median s per step (steps 1..{args.steps - 2}): {parts}; loop {loop:.1f} s for {args.steps}")
    print(f"speedup per step (synchronous / one-step-off): {medians[False] / medians[True]:.2f}x")


if __name__ == "__main__":
    main()
