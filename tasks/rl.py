"""Prefect tasks of one RL step: sample, score, update. Thin wrappers around ``steer`` library calls.

Sampling and scoring touch processes that can fail transiently (a rollout worker, the verifier's process pool), so
they retry; both are pure functions of their inputs and seed, so a retry reproduces the same result. The update is
never retried: a failure half-way through an optimizer step leaves the model changed, and the run resumes from the
last checkpoint instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from steer.advantages import compute_advantages
from steer.batch import PolicyBatch, build_policy_batch
from steer.config import RolloutConfig, RunConfig
from steer.data import Problem
from steer.models.loading import format_prompt
from steer.rollout.base import RolloutBatch, RolloutEngine
from steer.runtime import Runtime
from steer.scoring import score_batch
from steer.update import UpdateResult, policy_update, reuses_forward_as_old
from steer.verifiers.math import rewards_from_correct


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:  # called through ``.fn()``, outside a run
        logging.getLogger(__name__).warning(message)


@task(name="generate-rollouts", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def generate_rollouts(
    engine: RolloutEngine, tokenizer: Any, problems: list[Problem], cfg: RolloutConfig, instruction: str, seed: int
) -> RolloutBatch:
    """G responses for each of the B problems. (B problems) -> RolloutBatch with N = B*G rows."""
    prompts = [format_prompt(tokenizer, p["prompt"] + instruction) for p in problems]
    return engine.generate(
        prompts,
        n_samples=cfg.samples_per_prompt,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )


@task(name="score-rollouts", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def score_rollouts(scorer: Any, rollout: RolloutBatch, problems: list[Problem], reward_mode: str) -> dict:
    """Verify each response against its problem's answer: ``correct`` (N,) bool, ``rewards`` (N,) float and
    ``verifier_errors``, the responses a verifier fault left scored wrong after the scorer's own retries (warned)."""
    answers = [problems[int(i)]["answer"] for i in rollout.group_index]
    errors_before = scorer.num_errors
    correct = torch.tensor(scorer.score(rollout.response_text, answers), dtype=torch.bool)  # (N,)
    errors = scorer.num_errors - errors_before
    if errors:
        _warn(
            f"{errors} of {len(answers)} responses could not be verified (last fault: "
            f"{getattr(scorer, 'last_error', None)}); scored wrong, counted in reward/verifier_errors"
        )
    return {"correct": correct, "rewards": rewards_from_correct(correct, reward_mode), "verifier_errors": errors}


@task(name="update-policy", retries=0, cache_policy=NO_CACHE)
def update_policy(
    rt: Runtime, rollout: RolloutBatch, rewards: torch.Tensor, seed: int
) -> tuple[UpdateResult, PolicyBatch]:
    """Advantages, old log-probs under the rollout policy (from the update's own forward when it is on-policy:
    ``steer.update.reuses_forward_as_old``), then the mini-batch optimizer steps of ``rt.config``. Returns the
    update's result and the batch it trained on (with ``old_logp``, ``old_entropy``, ``advantages``)."""
    cfg: RunConfig = rt.config
    lengths = rollout.response_mask.sum(-1)  # (N,)
    adv = compute_advantages(rewards, rollout.group_index, estimator=cfg.algorithm.advantage_estimator, lengths=lengths)
    pad = rt.tokenizer.pad_token_id if rt.tokenizer.pad_token_id is not None else rt.tokenizer.eos_token_id
    batch = build_policy_batch(
        rollout.prompt_ids, rollout.group_index, rollout.response_ids, rollout.response_mask, adv, pad_id=pad
    ).to(rt.device)
    if rt.objective.correction is not None and rollout.sampling_logp is not None:  # TIS/MIS reads the sampler's
        batch.sampling_logp = rollout.sampling_logp.to(rt.device)
    temperature = cfg.rollout.temperature
    micro = cfg.optim.micro_batch_size
    if rt.ranks is not None:  # trainer.backend=ray: the ranks score and train; rt.model receives the weights
        settings = dict(mini_batch_size=cfg.mini_batch_size, micro_batch_size=micro, epochs=cfg.optim.epochs)
        settings.update(temperature=temperature, max_grad_norm=cfg.optim.max_grad_norm)
        result = rt.ranks.policy_update(
            batch, seed, sampling_model=rt.model, objective=rt.objective,
            max_response_len=cfg.rollout.max_new_tokens, **settings,
        )  # fmt: skip
        return result, batch
    t0 = time.perf_counter()
    if not reuses_forward_as_old(
        rt.objective, num_responses=len(batch), mini_batch_size=cfg.mini_batch_size, epochs=cfg.optim.epochs
    ):
        batch.old_logp, batch.old_entropy = score_batch(
            rt.model, batch, micro_batch_size=micro, temperature=temperature, autocast_dtype=rt.autocast_dtype
        )
    old_logp_s = time.perf_counter() - t0
    result = policy_update(
        rt.model,
        rt.optimizer,
        batch,
        rt.objective,
        mini_batch_size=cfg.mini_batch_size,
        micro_batch_size=micro,
        epochs=cfg.optim.epochs,
        temperature=temperature,
        max_grad_norm=cfg.optim.max_grad_norm,
        generator=torch.Generator().manual_seed(seed),  # CPU: drives the shuffle and Clip-Cov's choice
        autocast_dtype=rt.autocast_dtype,
        max_response_len=cfg.rollout.max_new_tokens,  # Dr.GRPO's constant: the budget, not the batch's longest
    )
    result.metrics["timing/old_logp"] = old_logp_s
    return result, batch


@task(name="sync-weights", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def sync_weights(engine: RolloutEngine, model: Any) -> dict[str, float]:
    """Push the trained weights to the rollout engine (vLLM: shared memory or a safetensors file, reloaded in the
    worker), then its probe check; returns the engine's ``sync_metrics`` (``rollout/sync_probe_*``,
    ``timing/weight_sync``). Idempotent, so it retries: a failed check (``WeightSyncError``) is re-synced twice
    before the step fails."""
    engine.update_weights(model)
    return dict(getattr(engine, "sync_metrics", {}))
