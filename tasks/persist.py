"""Prefect tasks that persist a step where people can read it: rollouts to Parquet, metrics to MLflow,
checkpoints to disk. Each returns a small pointer, never a model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from steer.batch import PolicyBatch
from steer.checkpoint import MANIFEST, checkpoint_path, save_checkpoint
from steer.data import Problem
from steer.lora import merged_model
from steer.rollout.base import RolloutBatch
from steer.rollout.pending import rollout_to_tensors
from steer.rollout_store import rollout_table, write_step
from steer.runtime import PENDING, Runtime
from steer.tracking import Tracker
from steer.update import UpdateResult


@task(name="write-rollouts", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def write_rollouts(
    output_dir: str,
    run_id: str,
    step: int,
    problems: list[Problem],
    prompts: list[str],
    rollout: RolloutBatch,
    scores: dict,
    batch: PolicyBatch,
    result: UpdateResult,
) -> str:
    """One Parquet file per step (atomic, idempotent on resume); returns its path."""
    table = rollout_table(
        run_id=run_id,
        step=step,
        prompt_ids=[p["id"] for p in problems],
        prompts=prompts,
        answers=[p["answer"] for p in problems],
        group_index=rollout.group_index,
        sample_index=rollout.sample_index,
        responses=rollout.response_text,
        response_ids=rollout.response_ids.cpu(),
        response_mask=rollout.response_mask.cpu(),
        truncated=rollout.truncated.cpu(),
        rewards=scores["rewards"],
        correct=scores["correct"],
        old_logp=batch.old_logp.cpu(),
        entropy=batch.old_entropy.cpu(),
        advantage=result.token_advantages.cpu(),
        omega=result.omega.cpu(),
        steer_weight=result.weights.cpu(),
    )
    return str(write_step(Path(output_dir) / "rollouts", step, table))


@task(name="log-metrics", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_metrics(tracker: Tracker, metrics: Mapping[str, float], step: int) -> None:
    """The tracker retries transient errors itself (with backoff); this task retry covers a longer outage."""
    tracker.log_metrics(metrics, step=step)


@task(name="save-checkpoint", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def checkpoint(rt: Runtime, step: int) -> str:
    """Save the state after ``step`` steps (model, optimizer, RNG, the run's config); the final one goes to MLflow in
    ``log_final_checkpoint``."""
    path = save_checkpoint(
        Path(rt.config.output_dir) / "checkpoints",
        step,
        rt.model,
        rt.tokenizer,
        rt.optimizer,
        extra={**rt.extra, "config": rt.config.model_dump(mode="json"), "config_version": rt.resume.version},
        keep_last=rt.config.keep_checkpoints,
        # one-step-off: the rollout of the next step, sampled with weights this checkpoint does not hold
        tensors={PENDING: rollout_to_tensors(rt.pending, step)} if rt.pending is not None else None,
        shards=rt.save_shards if rt.ranks is not None else None,  # trainer ranks write their own shards
    )
    return str(path)


@task(name="log-model", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_policy(tracker, rt: Runtime, step: int, registered_name: str | None = None) -> str:
    """The trained policy as the run's MLflow model (transformers flavour), optionally registered; its URI."""
    model = merged_model(rt.model)  # LoRA: a plain model with the adapters merged in, as the checkpoints hold
    return tracker.log_model(model, rt.tokenizer, step=step, registered_name=registered_name)


@task(name="log-final-checkpoint", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_final_checkpoint(output_dir: str, step: int, tracker: Tracker) -> str | None:
    """Log the final checkpoint (``checkpoints/step-<step>``) to MLflow as ``checkpoint/``, once per run.

    Done when the run ends rather than inside the save: a run killed between its final checkpoint and the upload
    finds nothing left to train on rerun, and this step completes it. ``<output_dir>/final_checkpoint_logged``
    records the upload (run id and folder); re-uploading after a partial upload overwrites the same files."""
    final = checkpoint_path(Path(output_dir) / "checkpoints", step)
    marker = Path(output_dir) / "final_checkpoint_logged"
    done = f"{tracker.run_id} {final.name}"
    if not (final / MANIFEST).is_file() or (marker.is_file() and marker.read_text().strip() == done):
        return None
    tracker.log_artifact(final, artifact_path="checkpoint")
    marker.write_text(done + "\n")
    return str(final)
