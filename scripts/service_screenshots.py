"""Screenshots of the service for docs/service.md, taken in headless Chromium (Debian's `chromium` package).

Starts `scripts/service.sh` on free ports with its state in a temporary folder, deploys, starts a training through
the `train` deployment, and photographs: the train deployment's run form, the running flow run's logs and
artifacts, the finished run's summary artifact, and the MLflow run page and its logged model. Then stops everything.

    python scripts/service_screenshots.py --out docs/figures/service [--steps 12] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "service.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shoot(url: str, path: Path, *, width: int = 1440, height: int = 1000, wait_ms: int = 15000) -> None:
    """One headless Chromium screenshot of ``url`` after ``wait_ms`` of (virtual) time for the page's scripts."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Chromium: apt-get install chromium")
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--virtual-time-budget={wait_ms}",
        f"--screenshot={path}",
        url,
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"{path}  <- {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "service")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--model", default="tiny", help="model.name_or_path of the training run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    d = Path(tempfile.mkdtemp(prefix="steer-shots-"))
    env = {
        **os.environ,
        "STEER_SERVICE_DIR": str(d / "svc"),
        "PREFECT_HOME": str(d / "prefect-home"),
        "PREFECT_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "STEER_MLFLOW_STORE": f"sqlite:///{d / 'mlflow.db'}",
        "STEER_MLFLOW_ARTIFACTS": str(d / "served"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    prefect = f"http://127.0.0.1:{env['PREFECT_PORT']}"
    mlflow_url = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    try:
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=300)
        subprocess.run([str(SCRIPT), "deploy"], env=env, check=True, timeout=300, capture_output=True)
        os.environ["PREFECT_API_URL"] = f"{prefect}/api"
        from mlflow import MlflowClient
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        out = d / "run"
        overrides = {
            "steps": args.steps,
            "output_dir": str(out),
            "model.name_or_path": args.model,
            "rollout.prompts_per_step": 8,  # a light batch: the pictures need a run in progress, not a result
            "optim.mini_batch_prompts": 4,
            "optim.micro_batch_size": 16,
            "data.heldout_size": 32,
            "eval.every": 4,
        }
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("steer-train-preset/train")
            shoot(f"{prefect}/deployments/deployment/{deployment.id}/run", args.out / "train-form.png")
            run = run_deployment(
                "steer-train-preset/train",
                parameters={"preset": "tiny", "algorithm": "steer", "overrides": overrides},
                timeout=0,
            )
            while not (out / "rollouts").exists() or len(list((out / "rollouts").glob("*.parquet"))) < 3:
                if client.read_flow_run(run.id).state.is_final():
                    break
                time.sleep(2)
            shoot(f"{prefect}/runs/flow-run/{run.id}?tab=Logs", args.out / "running-logs.png")
            shoot(f"{prefect}/runs/flow-run/{run.id}?tab=Artifacts", args.out / "running-artifacts.png")
            while not client.read_flow_run(run.id).state.is_final():
                time.sleep(3)
            # the training itself is the subflow: its own page holds the step lines and the summary artifact
            children = [r for r in client.read_flow_runs() if r.parent_task_run_id and r.name.startswith("steer-s")]
            page = children[0].id if children else run.id
            shoot(f"{prefect}/runs/flow-run/{page}?tab=Artifacts", args.out / "finished-artifacts.png")
            artifact = next(a for a in client.read_artifacts() if a.key and a.key.endswith("-summary"))
            shoot(f"{prefect}/artifacts/artifact/{artifact.id}", args.out / "summary-artifact.png")
        ml = MlflowClient(tracking_uri=mlflow_url)
        mlrun = ml.get_run((out / "mlflow_run_id").read_text().strip())
        exp = mlrun.info.experiment_id
        shoot(f"{mlflow_url}/#/experiments/{exp}/runs/{mlrun.info.run_id}", args.out / "mlflow-run.png")
        model_id = mlrun.data.tags["steer.model_uri"].removeprefix("models:/")
        shoot(f"{mlflow_url}/#/experiments/{exp}/models/{model_id}", args.out / "mlflow-model.png")
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120)


if __name__ == "__main__":
    main()
