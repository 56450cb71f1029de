"""Prefect task: evaluate the live policy on a list of problems (held-out data inside training, or a benchmark)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from steer.data import Problem
from steer.evaluation import evaluate_problems
from steer.rollout.base import RolloutEngine


@task(name="evaluate", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def evaluate_policy(
    engine: RolloutEngine,
    tokenizer: Any,
    scorer: Any,
    problems: list[Problem],
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    instruction: str = "",
    pass_ks: tuple[int, ...] = (),
    prefix: str = "eval",
) -> tuple[dict[str, float], list[dict]]:
    """Retried once: sampling and scoring are pure functions of the seed, so a retry reproduces the result."""
    return evaluate_problems(
        engine,
        tokenizer,
        scorer,
        problems,
        k=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        instruction=instruction,
        pass_ks=pass_ks,
        prefix=prefix,
    )
