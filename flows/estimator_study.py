"""The estimator study: how well does each entropy-change estimator predict the change one real optimizer step
makes? The paper's Table 1 protocol (method.md, "Measuring the estimator"), at several stages of a training run.

    steer study estimator --output-dir runs/estimator-study

1. the source run: the training flow on ``preset`` + ``overrides`` in ``source_dir`` (default ``<output_dir>/run``; a
   subflow that resumes), keeping every checkpoint; a finished source run (a checkpoint of its last step) is reused
   as it is, without the subflow, so another study's run can be measured again;
2. per stage (start, middle, end, or a checkpoint step) and rollout batch k < ``batches``: load that policy, sample
   batch k (the k-th prompt batch of the study's order, the same prompts at every stage; its own rollout seed, batch
   0's that of the single-batch study), verify it, compute advantages, and score log p and H at every response state;
3. per optimizer cell: one step from a fresh copy of the policy, and H again at exactly the same states;
4. the per-token table (``tokens.parquet``), the statistics table per batch (``estimator_table.csv``/``.md``), its
   summary over batches (``estimator_summary.csv``/``.md``: mean and 95% t-interval), the cell table (``cells.csv``)
   and one scatter PNG per cell, all logged to one MLflow run (params: the study's settings; metrics
   ``estimator/<cell>/<estimator>/<stat>``, the means over batches, at step = the checkpoint step). Without
   ``MLFLOW_TRACKING_URI`` the store is ``<output_dir>/mlflow.db``, which also holds a source run the study trained.
   Rerunning on the same folder reuses the source run and the study's MLflow run (a changed setting fails at once
   with the key that differs).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from prefect import flow

from flows.train import train
from steer.rollout.base import make_rollout_engine
from steer.runtime import DataOrder, resolve_device
from steer.studies.config import EstimatorStudyConfig, prompt_order_seed, rollout_seed
from steer.studies.estimator import cell_table, estimator_table, summary_table, token_frame
from steer.tracking import closing_run
from steer.verifiers import VERIFIERS
from tasks.data import prepare_data, prepare_policy, read_problems
from tasks.rl import generate_rollouts, score_rollouts
from tasks.study import (
    finished_source_run,
    load_stage_policy,
    log_study,
    optimizer_step,
    predict_changes,
    resolve_stages,
    study_batch,
    write_study,
)
from tasks.tracking import MlflowTracker, tracking_uri_env


@flow(name="steer-estimator-study", log_prints=True, persist_result=False)
def estimator_study(config: EstimatorStudyConfig = EstimatorStudyConfig()) -> dict:  # noqa: B008 (Prefect's form)
    """Measure every estimator against one real optimizer step per cell, on every rollout batch of every stage.
    Returns the table and summary rows, where the files are, the wall times and the MLflow run ids."""
    out = Path(config.output_dir)
    source = config.check()  # every setting validated before anything starts
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    tracker = MlflowTracker(out, experiment=config.experiment, run_name=f"estimator-study-{out.name}")
    with closing_run(tracker):  # FINISHED, FAILED, or KILLED when interrupted
        try:
            tracker.log_params(config.params())  # a rerun with other settings fails here, before any work
        except ValueError as e:
            raise ValueError(
                f"{out} holds a study made with other settings ({e}). Use another output_dir, or delete "
                f"{out / 'mlflow_run_id'} to start a new study run that still reuses the source run in "
                f"{config.source_path}"
            ) from None

        # 1. the source run: reused when finished, else trained or resumed (its MLflow run in the study's store)
        source_run_id = finished_source_run(source)
        if source_run_id is None:
            with tracking_uri_env(tracker.tracking_uri):
                trained = train.with_options(flow_run_name=f"estimator-study-source-{out.name}")(source)
            source_run_id = trained["mlflow_run_id"]
            print(f"source run: {trained['steps']} steps, resumed from step {trained['resumed_from']}")
        else:
            print(f"source run: finished ({source.steps} steps) in {config.source_path}, reused")
        tracker.set_tags({"steer.source_run_id": source_run_id, "steer.source_dir": str(config.source_path)})
        timing["source_run"] = time.perf_counter() - t0

        # 2.-3. per stage and batch: the policy, rollout batch k (the same prompts at every stage), one step per cell
        if source.model.num_threads:  # as the training flow sets them: the same arithmetic, trained here or not
            torch.set_num_threads(source.model.num_threads)
        stages = resolve_stages(config.stages, source, prepare_policy(source.model))
        train_set = read_problems(prepare_data(source.data, str(config.source_path))["train"])
        order = DataOrder(train_set, config.prompts or source.rollout.prompts_per_step, prompt_order_seed(config.seed))
        device = resolve_device(source.model.device)
        frames, step_metrics = [], []
        with VERIFIERS.get(source.verifier)() as scorer:
            for st in stages:
                t1 = time.perf_counter()
                model, tokenizer = load_stage_policy(st, device)
                engine = make_rollout_engine("hf", model=model, tokenizer=tokenizer)
                for k in range(config.batches):
                    problems, seed = order.batch(k), rollout_seed(config.seed, st.step, k)
                    rollout = generate_rollouts(
                        engine, tokenizer, problems, source.rollout, source.data.instruction, seed
                    )
                    scores = score_rollouts(scorer, rollout, problems, source.reward_mode)
                    batch = study_batch(model, tokenizer, rollout, scores["rewards"], source)
                    preds = predict_changes(batch, source)
                    results = [optimizer_step(model, batch, source, cell) for cell in config.optimizers]
                    frames.append(
                        token_frame(batch, preds, results, stage=st.stage, checkpoint_step=st.step, batch_index=k)
                    )
                    step_metrics += [
                        {
                            "stage": st.stage,
                            "checkpoint_step": st.step,
                            "batch": k,
                            "optimizer": r.optimizer,
                            "lr": r.lr,
                            **r.metrics,
                        }
                        for r in results
                    ]
                engine.close()
                timing[f"stage_{st.stage}"] = time.perf_counter() - t1

        # 4. tables, files, MLflow
        frame = pd.concat(frames, ignore_index=True)
        table = estimator_table(frame)
        summary = summary_table(table)
        cells = cell_table(frame, step_metrics)
        paths = write_study(frame, table, summary, cells, str(out))
        log_study(tracker, table, cells, paths)
        timing["total"] = time.perf_counter() - t0
    return {
        "table": table.to_dict("records"),
        "summary": summary.to_dict("records"),
        "cells": cells.to_dict("records"),
        "stages": [{"stage": s.stage, "step": s.step, "path": s.path} for s in stages],
        **paths,
        "mlflow_run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "source_run_id": source_run_id,
        "source_dir": str(config.source_path),
        "timing": timing,
    }
