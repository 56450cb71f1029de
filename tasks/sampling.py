"""One step's rollout: sample, score, and (with DAPO's settings) shape the rewards and refill the batch.

``sample_and_score`` composes the ``generate-rollouts`` and ``score-rollouts`` tasks over generation rounds. Round 0
is the step's own B prompts (``DataOrder.batch(step)``) sampled with ``derive_seed(seed, "rollout", step)``: with
dynamic sampling and overlong shaping off, the step is exactly the plain sample-and-score. With dynamic sampling on,
extra round k (1..R, R = ``dynamic_sampling.max_extra_rounds``) samples B more prompts from a second seeded order of
the training set (``derive_seed(seed, "dynamic-sampling", 0)``), batch ``step * R + k - 1``, with the seed
``derive_seed(seed, "rollout/extra-k", step)``. Every prompt and seed is a pure function of (seed, step, round), so a
resumed run replays a step exactly without any saved loader state, and the main order is the same as with dynamic
sampling off (the arms of a comparison see the same first-round prompts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from steer.config import RunConfig
from steer.data import Problem
from steer.dynamic_sampling import concat_rollouts, informative_groups, overlong_penalty, select_groups
from steer.rollout.base import RolloutBatch, RolloutEngine
from steer.runtime import DataOrder, derive_seed
from tasks.rl import generate_rollouts, score_rollouts


@dataclass
class SampledStep:
    """The batch a step trains on: its problems (one per group), rollout, scores, and the sampling metrics."""

    problems: list[Problem]
    rollout: RolloutBatch
    scores: dict  # correct (N,) bool, rewards (N,) float (shaped), verifier_errors
    metrics: dict[str, float]


def _round(engine, tokenizer, scorer, problems, config: RunConfig, seed: int, timing: dict, rollout=None) -> tuple:
    """Generate (unless ``rollout`` was sampled ahead) and score one round; the rewards shaped by the overlong
    penalty when it is on."""
    t0 = time.perf_counter()
    if rollout is None:
        rollout = generate_rollouts(engine, tokenizer, problems, config.rollout, config.data.instruction, seed)
    t1 = time.perf_counter()
    scores = score_rollouts(scorer, rollout, problems, config.reward_mode)
    timing["timing/rollout"] += t1 - t0
    timing["timing/score"] += time.perf_counter() - t1
    if config.overlong_penalty.enabled:
        max_length, cache = config.overlong_penalty.lengths(config.rollout.max_new_tokens)
        penalty = overlong_penalty(
            rollout.response_lengths, max_length=max_length, cache=cache, factor=config.overlong_penalty.factor
        )  # (N,)
        scores = {**scores, "rewards": scores["rewards"] + penalty, "overlong_penalty": penalty}
    return rollout, scores


def _pick(rollout: RolloutBatch, scores: dict, groups: list[int]) -> tuple[RolloutBatch, dict]:
    rows = torch.cat([torch.nonzero(rollout.group_index == g).flatten() for g in groups])
    picked = {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in scores.items()}
    return select_groups(rollout, groups), picked


def sample_and_score(
    engine: RolloutEngine,
    tokenizer: Any,
    scorer: Any,
    data: DataOrder,
    step: int,
    config: RunConfig,
    rollout: RolloutBatch | None = None,
) -> SampledStep:
    """The step's rollout and scores (module docstring); ``rollout`` is round 0 when it was sampled ahead
    (one-step-off: the same prompts and seed, the weights of the step before).

    Metrics: ``timing/rollout``, ``timing/score`` (summed over rounds); with overlong shaping
    ``reward/overlong_shaped_frac`` (share of the trained responses with a penalty) and
    ``reward/overlong_penalty_mean``; with dynamic sampling ``rollout/dynamic_sampling_groups_dropped`` (zero-variance
    groups generated), ``rollout/dynamic_sampling_rounds`` (extra rounds used), ``rollout/dynamic_sampling_groups``
    (groups trained on), ``rollout/dynamic_sampling_bound_reached`` (1 when the batch holds fewer than B groups) and
    ``reward/accuracy_generated`` (over every response generated)."""
    b = config.rollout.prompts_per_step
    timing = {"timing/rollout": 0.0, "timing/score": 0.0}
    problems = data.batch(step)
    rollout, scores = _round(
        engine, tokenizer, scorer, problems, config, derive_seed(config.seed, "rollout", step), timing, rollout
    )
    metrics: dict[str, float] = {}
    ds = config.dynamic_sampling
    if ds.enabled:
        extra = DataOrder(data.problems, b, derive_seed(config.seed, "dynamic-sampling", 0))
        kept_problems, kept_rollouts, kept_scores = [], [], []
        dropped = rounds = errors = 0
        correct_all: list[torch.Tensor] = []
        round_problems, round_rollout, round_scores = problems, rollout, scores
        first = (problems, rollout, scores)
        while True:
            keep = informative_groups(round_scores["rewards"], round_rollout.group_index, len(round_problems))
            groups = torch.nonzero(keep).flatten().tolist()[: b - len(kept_problems)]  # DAPO keeps exactly B
            dropped += int((~keep).sum())
            errors += round_scores["verifier_errors"]
            correct_all.append(round_scores["correct"])
            if groups:
                r, s = _pick(round_rollout, round_scores, groups)
                kept_problems += [round_problems[g] for g in groups]
                kept_rollouts.append(r)
                kept_scores.append(s)
            if len(kept_problems) >= b or rounds >= ds.max_extra_rounds:
                break
            rounds += 1
            round_problems = extra.batch(step * ds.max_extra_rounds + rounds - 1)
            seed = derive_seed(config.seed, f"rollout/extra-{rounds}", step)
            round_rollout, round_scores = _round(engine, tokenizer, scorer, round_problems, config, seed, timing)
        if kept_problems:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            problems, rollout = kept_problems, concat_rollouts(kept_rollouts, pad_id=pad)
            scores = {
                k: torch.cat([s[k] for s in kept_scores])
                for k, v in kept_scores[0].items()
                if isinstance(v, torch.Tensor)
            }
        else:  # nothing informative within the bound: the first round, as sampled (A = 0 everywhere)
            problems, rollout, scores = first
        scores["verifier_errors"] = errors
        metrics.update({
            "rollout/dynamic_sampling_groups_dropped": float(dropped),
            "rollout/dynamic_sampling_rounds": float(rounds),
            "rollout/dynamic_sampling_groups": float(len(problems)),
            "rollout/dynamic_sampling_bound_reached": float(len(kept_problems) < b),
            "reward/accuracy_generated": float(torch.cat(correct_all).float().mean()),
        })  # fmt: skip
    if config.overlong_penalty.enabled:
        penalty = scores["overlong_penalty"]
        metrics["reward/overlong_shaped_frac"] = float((penalty < 0).float().mean())
        metrics["reward/overlong_penalty_mean"] = float(penalty.mean())
    return SampledStep(problems, rollout, scores, {**metrics, **timing})
