"""The evaluation flow: a model x benchmarks -> generations in Parquet and a results table in MLflow.

steer eval --model runs/tiny/checkpoints/step-000040 --benchmark reasoning_gym_heldout,champ --k 4
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from steer.benchmarks import BENCHMARKS, load_benchmark
from steer.checkpoint import MANIFEST, verify_checkpoint
from steer.config import ScoringConfig
from steer.models.loading import load_policy, resolve_policy
from steer.rollout.base import make_rollout_engine
from steer.runtime import cache_dir, derive_seed, resolve_device
from steer.tracking import closing_run
from tasks.data import retry_transient
from tasks.evaluate import evaluate_policy
from tasks.fanout import make_scorer
from tasks.tracking import RUN_ID_FILE, MlflowTracker, mlflow_policy_folder

EMBEDDED_TEMPLATE = "{problem}"
"""The embedded policy was trained on raw problems; benchmark instructions would be noise to it."""


@task(name="resolve-model", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def resolve_model(model: str) -> str:
    """A local folder, an MLflow model or artifact (``models:/<model_id>``, ``runs:/<run_id>/policy``, downloaded), an
    embedded name, or a hub id."""
    if model.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return mlflow_policy_folder(model)
    return resolve_policy(model, cache_dir())


def _table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| benchmark | metric | value |", "| --- | --- | --- |"]
    for bench, metrics in results.items():
        for k, v in metrics.items():
            lines.append(f"| {bench} | {k.split('/', 2)[-1]} | {v:.4f} |")
    return "\n".join(lines)


@flow(name="steer-evaluate", log_prints=True, persist_result=False)
def evaluate(
    model: str = "tiny",
    benchmarks: list[str] = ["reasoning_gym_heldout"],  # noqa: B006  (Prefect shows the default in its form)
    k: int | None = None,
    limit: int | None = None,
    max_new_tokens: int = 1024,
    temperature: float | None = None,
    top_p: float | None = None,
    template: str | None = None,
    data_paths: dict[str, str] | None = None,
    output_dir: str = "runs/eval",
    seed: int = 0,
    device: str = "auto",
    scoring: ScoringConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate ``model`` on each benchmark with its defaults (the paper's: temperature 1.0, top-p 0.7, avg@32 on
    AIME/AMC, avg@1 elsewhere) unless overridden. ``template``: a prompt template over ``{problem}`` replacing the
    benchmark's (default: the raw problem for the embedded policy). ``scoring``: where the verifier runs (the process
    pool by default, or Prefect's Ray or Dask task runner: ``steer.config.ScoringConfig``).
    Returns {benchmark: metrics}."""
    for name in benchmarks:
        BENCHMARKS.get(name)  # fail before loading anything when a name is wrong
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every evaluation is a new MLflow run: reopening the folder's last one would keep its metrics as already logged
    # and drop the new ones (the files of the folder are rewritten)
    (out / RUN_ID_FILE).unlink(missing_ok=True)
    tracker = MlflowTracker(out, experiment="steer-eval", run_name=f"eval-{Path(model).name}")
    tracker.log_params({"model": model, "benchmarks": ",".join(benchmarks), "seed": seed})
    if template is None and model == "tiny":
        template = EMBEDDED_TEMPLATE
    results: dict[str, dict[str, float]] = {}
    # the MLflow run is open before anything can fail (a bad model path, a damaged checkpoint): it ends FINISHED, or
    # FAILED (KILLED) with the error as its steer.error tag when the evaluation raises (is interrupted), and the
    # error propagates, so the Prefect flow run fails too
    with closing_run(tracker):
        path = resolve_model(model)
        if (Path(path) / MANIFEST).is_file():  # a training checkpoint: its files must match their hashes
            verify_checkpoint(path)
        policy, tokenizer = load_policy(path, dtype=torch.float32, device=resolve_device(device))
        engine = make_rollout_engine("hf", model=policy, tokenizer=tokenizer)
        with closing(engine):
            for name in benchmarks:
                spec = BENCHMARKS.get(name)
                problems = load_benchmark(name, (data_paths or {}).get(name), limit=limit, template=template)
                n = k or spec.k
                with make_scorer(spec.verifier, scoring) as scorer:
                    metrics, rows = evaluate_policy(
                        engine,
                        tokenizer,
                        scorer,
                        problems,
                        k=n,
                        temperature=temperature or spec.temperature,
                        top_p=top_p or spec.top_p,
                        max_new_tokens=max_new_tokens,
                        seed=derive_seed(seed, name, 0),
                        pass_ks=tuple(j for j in (1, 4, 8, 16, 32) if j <= n),
                        prefix=f"eval/{name}",
                    )
                gen_path = out / f"generations-{name}.parquet"
                pq.write_table(pa.Table.from_pylist(rows), gen_path)
                tracker.log_metrics(metrics, step=0)
                tracker.log_artifact(gen_path, artifact_path="generations")
                results[name] = metrics
            table = _table(results)
            (out / "results.md").write_text(table + "\n")
            tracker.log_artifact(out / "results.md")
            create_markdown_artifact(table, key="steer-eval-results", description=f"evaluation of {model}")
    return results
