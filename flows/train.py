"""The training flow: data -> policy -> for each step: sample, score, update, persist, log; evaluate and checkpoint
every K steps. Reads top to bottom like the training loop; each step's work lives in a task in ``tasks/``.

    steer train --preset tiny --algorithm steer --steps 30
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run

from steer.algorithms import AlgorithmName
from steer.config import RunConfig, load_config, preset_names
from steer.diagnostics import logp_mismatch, rollout_metrics
from steer.rollout_store import remove_steps_after
from steer.runtime import DataOrder, derive_seed, open_runtime, resolve_device
from steer.tracking import closing_run, with_aliases
from tasks.data import fit_context, prepare_data, prepare_policy, read_problems
from tasks.evaluate import evaluate_policy
from tasks.fanout import make_scorer
from tasks.persist import checkpoint, log_final_checkpoint, log_metrics, log_policy, write_rollouts
from tasks.progress import RunProgress, flow_run_link, mlflow_run_url
from tasks.rl import generate_rollouts, sync_weights, update_policy
from tasks.runs import claim_output_dir
from tasks.sampling import sample_and_score
from tasks.slots import training_slot
from tasks.tracking import MlflowTracker, run_tags

PresetName = Literal[tuple(preset_names())]


def _short_id() -> str:
    return str(flow_run.id or "")[:8]


def _preset_run_name() -> str:
    p = flow_run.parameters
    return f"{p.get('preset', 'tiny')}-{p.get('algorithm', 'steer')}-{_short_id()}"


def _run_name() -> str:
    """``<algorithm>-s<seed>-<short flow-run id>`` in the Prefect UI (not a random adjective-animal)."""
    config = flow_run.parameters.get("config")
    if isinstance(config, dict):
        config = RunConfig(**config)
    if config is None:
        return f"train-{_short_id()}"
    return f"{config.algorithm.name}-s{config.seed}-{_short_id()}"


@flow(name="steer-train-preset", flow_run_name=_preset_run_name, log_prints=True, persist_result=False)
def train_preset(
    preset: PresetName = "tiny",
    algorithm: AlgorithmName = "steer",
    overrides: dict[str, Any] | None = None,
) -> dict:
    """Train a preset with an algorithm chosen by name: the config is resolved by ``steer.config.load_config`` (the
    resolver ``steer train`` uses), then the ``train`` flow runs it.

    Args:
        preset: run preset (steer/presets/*.yaml): tiny, study, smollm2.
        algorithm: algorithm preset by name (steer.algorithms.ALGORITHMS): grpo, steer, clip_cov, ...
        overrides: dotted or nested settings over both, e.g. {"steps": 10, "output_dir": "runs/ui-train",
            "algorithm.token_weighting.lambda_min": 0.8}.
    """
    return train(load_config(preset, overrides, algorithm=algorithm))


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


@flow(name="steer-train", flow_run_name=_run_name, log_prints=True, persist_result=False)
def train(config: RunConfig) -> dict:
    """Train ``config.model`` with ``config.algorithm`` for ``config.steps`` RL steps; resumes from the last
    checkpoint in ``config.output_dir``. Returns a summary (held-out accuracy and entropy, where things are)."""
    out = Path(config.output_dir)
    claim_output_dir(out)  # a flow run a kill left RUNNING in this folder is marked CRASHED
    with ExitStack() as stack:
        # 0. one training per device kind at a time, where the server sets a limit (scripts/service.sh does)
        stack.enter_context(training_slot(resolve_device(config.model.device).type))
        # 1. data and the initial policy (both cached: a rerun or resume reuses them)
        paths = prepare_data(config.data, str(out))
        train_set, heldout = read_problems(paths["train"]), read_problems(paths["heldout"])
        policy_path = prepare_policy(config.model)

        # 2. live objects: model, optimizer, engine (restored from the last checkpoint), verifier, tracker
        rt = open_runtime(config, policy_path)
        stack.callback(rt.close)
        train_set, heldout = fit_context(train_set, rt, "train"), fit_context(heldout, rt, "heldout")
        remove_steps_after(out / "rollouts", rt.start_step - 1)  # steps past the checkpoint are redone
        scorer = stack.enter_context(make_scorer(config.verifier, config.scoring))  # pool, or Ray/Dask
        run_name = f"{config.algorithm.name}-s{config.seed}"
        tracker = stack.enter_context(closing_run(MlflowTracker(out, experiment=config.experiment, run_name=run_name)))
        if not tracker.resumed:
            tracker.log_params(config.model_dump(mode="json"))
        elif rt.resume.safe:  # safe changes on resume (steps, eval cadence): a new param version, from this step
            tracker.log_params(rt.resume.params(rt.start_step))
        # links both ways: the MLflow run names the commit and this flow run; the flow run links the MLflow run
        prefect_id, prefect_url = flow_run_link()
        tracker.set_tags(run_tags(config, prefect_id, prefect_url))
        if config.tracking.log_datasets:
            tracker.log_datasets(paths)
        if config.tracking.system_metrics:
            tracker.start_system_metrics(config.tracking.system_metrics_interval_s)
        mlflow_url = mlflow_run_url(tracker.tracking_uri, tracker.experiment_id, tracker.run_id)
        report = RunProgress(flow_run.name or run_name, config.steps, rt.start_step)  # labelled as the flow run
        report.link_mlflow(mlflow_url, tracker.tracking_uri, tracker.run_id)
        data = DataOrder(train_set, config.rollout.prompts_per_step, config.seed)
        instruction = config.data.instruction

        # updates done -> eval metrics (JSON in the checkpoint turns the keys into strings)
        evals: dict[int, dict[str, float]] = {int(k): v for k, v in rt.extra.get("evals", {}).items()}

        def evaluate(updates_done: int) -> None:
            seed = derive_seed(config.seed, "eval", updates_done)
            e = config.eval
            metrics, _ = evaluate_policy(
                rt.engine,
                rt.tokenizer,
                scorer,
                heldout,
                k=e.samples_per_prompt,
                temperature=e.temperature,
                top_p=e.top_p,
                max_new_tokens=e.max_new_tokens,
                seed=seed,
                instruction=instruction,
            )
            metrics["eval/accuracy"] = metrics[f"eval/avg_at_{e.samples_per_prompt}"]
            evals[updates_done] = metrics
            log_metrics(tracker, evals[updates_done], updates_done)

        # 3. held-out accuracy of the starting policy
        if rt.start_step == 0:
            evaluate(0)

        # 4. the RL loop
        def rollout_args(s: int) -> tuple:
            return (
                rt.engine,
                rt.tokenizer,
                data.batch(s),
                config.rollout,
                instruction,
                derive_seed(config.seed, "rollout", s),
            )

        for step in range(rt.start_step, config.steps):
            t0 = time.perf_counter()
            # one-step-off: round 0 of this step was sampled during the last update (or restored from the checkpoint)
            ahead_of_time, rt.pending = rt.pending, None
            # sample and score B prompts x G (DAPO's dynamic sampling refills the zero-variance groups, when on)
            sampled = sample_and_score(rt.engine, rt.tokenizer, scorer, data, step, config, rollout=ahead_of_time)
            problems, rollout, scores = sampled.problems, sampled.rollout, sampled.scores
            ahead = None
            if config.rollout.one_step_off and step + 1 < config.steps:  # the engine still has the pre-update weights
                ahead = generate_rollouts.submit(*rollout_args(step + 1))
            t2 = time.perf_counter()
            try:
                result, batch = update_policy(rt, rollout, scores["rewards"], derive_seed(config.seed, "update", step))
            except BaseException:
                if ahead is not None:
                    ahead.wait()  # the engine finishes its request before the runtime closes it
                raise
            t_wait = time.perf_counter()
            if ahead is not None:
                rt.pending = ahead.result()  # the engine is idle again: the sync may replace its weights
            wait = time.perf_counter() - t_wait
            sync = {}
            if not rt.engine.shares_model:  # hf samples from the trained model itself: nothing to sync
                sync = sync_weights(rt.engine, rt.model)  # the sampler follows the trainer
            t3 = time.perf_counter()
            prompts = [rt.tokenizer.decode(ids) for ids in rollout.prompt_ids]
            write_rollouts(str(out), tracker.run_id, step, problems, prompts, rollout, scores, batch, result)
            t4 = time.perf_counter()
            metrics = {
                **rollout_metrics(
                    scores["rewards"], scores["correct"], rollout.group_index, rollout.response_mask, rollout.truncated
                ),
                **result.metrics,
                **logp_mismatch(rollout.sampling_logp, batch.old_logp, batch.response_mask),
                "reward/verifier_errors": float(scores["verifier_errors"]),
                "rollout/entropy": float((batch.old_entropy * batch.response_mask).sum() / batch.response_mask.sum()),
                **sampled.metrics,  # timing/rollout, timing/score, dynamic sampling and overlong shaping
                "timing/update": t3 - t2 - wait,  # the update and the weight sync
                **({"timing/rollout_wait": wait} if ahead is not None else {}),
                **sync,
                "timing/persist": t4 - t3,
            }
            metrics["timing/step"] = time.perf_counter() - t0
            log_metrics(tracker, with_aliases(metrics), step)  # + verl's spelling of the same metrics
            done = step + 1
            if _due(done, config.eval.every, config.steps):
                evaluate(done)
            # the checkpoint comes last: everything of the steps before it is persisted when it appears
            if _due(done, config.checkpoint_every, config.steps):
                rt.extra = {"evals": evals, "objective": rt.objective.state_dict()}  # adaptive entropy coef
                checkpoint(rt, done)
            report.step(done, metrics, time.perf_counter() - t0)

        # 5. the trained policy as an MLflow model (also after a rerun of a finished run that died before logging it)
        model_uri = tracker.logged_model_uri()
        if config.tracking.log_model and model_uri is None:
            model_uri = log_policy(tracker, rt, config.steps, config.tracking.registered_model_name)

        # 6. with tracking.log_checkpoints, the final checkpoint to MLflow (also when a kill came between its save and
        # its upload)
        if config.tracking.log_checkpoints:
            log_final_checkpoint(str(out), config.steps, tracker)

        first, last = evals.get(0, {}), evals[max(evals)] if evals else {}
        trained = [v["eval/accuracy"] for k, v in evals.items() if k > 0]  # the start is not a trained policy
        # from the run's history: after a resume, this process saw only the steps since the checkpoint
        entropy = tracker.metric_history("rollout/entropy")
        summary = {
            "algorithm": config.algorithm.name,
            "steps": config.steps,
            "resumed_from": rt.start_step,
            "heldout_accuracy_before": first.get("eval/accuracy"),
            "heldout_accuracy_after": last.get("eval/accuracy"),
            "heldout_accuracy_best": max(trained) if trained else None,
            "evals": {str(k): v for k, v in sorted(evals.items())},
            "entropy_first": entropy[min(entropy)] if entropy else None,
            "entropy_last": entropy[max(entropy)] if entropy else None,
            "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": tracker.tracking_uri,
            "mlflow_run_url": mlflow_url,
            "model_uri": model_uri,
            "prefect_flow_run_id": prefect_id,
            "rollouts_dir": str(out / "rollouts"),
            "checkpoints_dir": str(out / "checkpoints"),
        }
        report.summary(summary, mlflow_url)
        return summary
