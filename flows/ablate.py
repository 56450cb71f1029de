"""The ablation flow: arms x seeds of the training flow as subflows, one parent MLflow run with a child run per arm
and seed, then the comparison report (PNGs and a summary table in MLflow and as Prefect artifacts).

    steer ablate --arms grpo,steer_0.7 --seeds 0,1 --steps 20

Layout under ``<output_root>``: ``<arm>/seed-<seed>/`` per run (the training flow's folder: Parquet rollouts,
checkpoints), ``report/`` (PNGs, ``summary.csv``, ``summary.md``), ``mlflow_run_id`` (the parent run) and, unless
``MLFLOW_TRACKING_URI`` names another store, the MLflow store ``mlflow.db`` holding the parent and every child.
Rerunning the flow on the same folder resumes it: finished runs are not redone, interrupted ones resume from their
last checkpoint.

How the children join the parent without changes to the training flow: the child run is created here (tags
``mlflow.parentRunId``, ``steer.arm``, ``steer.seed``; the run's params) in the run's output folder, and the
training flow's tracker reopens it as a resumed run. ``MLFLOW_TRACKING_URI`` is set to the parent's store while the
subflows run, so that every tracker opens the same store.
"""

from __future__ import annotations

import json

from mlflow import MlflowClient
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.train import train
from steer.ablation import AblationConfig, Job
from tasks.comparison import ARM_TAG, ARMS_TAG, SEED_TAG, build_report, log_weight_histogram
from tasks.data import prepare_policy
from tasks.tracking import MlflowTracker, tracking_uri_env, with_retries


def parent_params(config: AblationConfig) -> dict[str, str]:
    """The ablation's settings as flat MLflow params (arms and overrides as JSON: their keys hold dots)."""
    return {
        "preset": config.preset,
        "seeds": ",".join(map(str, config.seeds)),
        "steps": str(config.steps),
        "concurrency": str(config.concurrency),
        "arms": json.dumps([a.model_dump() for a in config.arms]),
        "overrides": json.dumps(config.overrides),
    }


@task(name="open-child-run", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def open_child_run(job: Job, parent_run_id: str, tracking_uri: str) -> str:
    """Create (or reopen, on a rerun) the MLflow run of ``job`` under the parent, with its params; returns its id."""
    tracker = MlflowTracker(
        job.config.output_dir,
        experiment=job.config.experiment,
        run_name=f"{job.arm}-s{job.seed}",
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
        tags={ARM_TAG: job.arm, SEED_TAG: job.seed, "steer.algorithm": job.config.algorithm.name},
    )
    if not tracker.resumed:
        tracker.log_params(job.config.model_dump(mode="json"))
    return tracker.run_id


@task(name="train-arm", cache_policy=NO_CACHE)
def train_arm(job: Job, run_id: str, tracking_uri: str) -> dict:
    """The training flow on ``job`` (a subflow), then its token-weight histogram logged to its run. No retries: a
    rerun of the ablation resumes the run from its last checkpoint instead."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        summary = train.with_options(flow_run_name=f"{job.arm}-s{job.seed}")(job.config)
    except BaseException:
        with_retries(lambda: client.set_terminated(run_id, status="FAILED"))
        raise
    if summary["mlflow_run_id"] != run_id:
        raise RuntimeError(
            f"the training flow logged to MLflow run {summary['mlflow_run_id']} in {summary['mlflow_tracking_uri']}, "
            f"not to the child run {run_id} in {tracking_uri}: is MLFLOW_TRACKING_URI overridden inside the flow?"
        )
    log_weight_histogram(client, run_id, summary["rollouts_dir"])
    return {"arm": job.arm, "seed": job.seed, "run_id": run_id, "output_dir": job.config.output_dir}


@flow(name="steer-ablate", log_prints=True, persist_result=False)
def ablate(config: AblationConfig = AblationConfig()) -> dict:  # noqa: B008  (Prefect shows the default in its form)
    """Train every arm with every seed (``config.concurrency`` at a time), then compare them. Returns the parent
    run id, where things are, the summary table rows and the runs that failed (the flow fails if any did)."""
    root = config.resolved_root()
    jobs = config.jobs(root)  # every run's config is validated before anything starts

    # 1. each distinct policy once, before runs start together and would build it at the same time
    for model in {job.config.model.name_or_path: job.config.model for job in jobs}.values():
        prepare_policy(model)

    # 2. the parent run, and a child per arm and seed (made up front, so the MLflow UI nests them from the start)
    parent = MlflowTracker(
        root,
        experiment=config.experiment,
        run_name=f"ablation-{root.name}",
        tags={ARMS_TAG: ",".join(a.name for a in config.arms)},
    )
    try:
        if not parent.resumed:
            parent.log_params(parent_params(config))
        uri = parent.tracking_uri
        run_ids = [open_child_run(job, parent.run_id, uri) for job in jobs]
        print(f"ablation: {len(jobs)} runs, parent MLflow run {parent.run_id} in {uri}")

        # 3. the runs: one training subflow each, `concurrency` at a time
        with tracking_uri_env(uri), ThreadPoolTaskRunner(max_workers=config.concurrency) as runner:
            args = [{"job": j, "run_id": r, "tracking_uri": uri} for j, r in zip(jobs, run_ids)]
            futures = [runner.submit(train_arm, a) for a in args]
            for f in futures:
                f.wait()
        failed = [f"{j.arm}/seed-{j.seed}" for j, f in zip(jobs, futures) if not f.state.is_completed()]

        # 4. the comparison report, from what MLflow holds
        report = build_report(uri, parent.run_id, str(root / "report"))
    except BaseException:
        parent.close("FAILED")
        raise
    parent.close("FAILED" if failed else "FINISHED")
    print(report["markdown"])
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} runs failed: {', '.join(failed)}; the report covers the rest")
    return {
        "parent_run_id": parent.run_id,
        "tracking_uri": uri,
        "output_root": str(root),
        "report_dir": str(root / "report"),
        "runs": [{"arm": j.arm, "seed": j.seed, "run_id": r} for j, r in zip(jobs, run_ids)],
        **report,
    }
