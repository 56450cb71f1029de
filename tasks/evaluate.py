"""Held-out evaluation inside training: sample k responses per held-out problem and verify them."""

from __future__ import annotations

from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from steer.config import EvalConfig
from steer.data import Problem
from steer.models.loading import format_prompt
from steer.rollout.base import RolloutEngine


@task(name="evaluate-heldout", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def evaluate_heldout(
    engine: RolloutEngine, tokenizer: Any, scorer: Any, problems: list[Problem], cfg: EvalConfig, instruction: str,
    seed: int,
) -> dict[str, float]:  # fmt: skip
    """``eval/accuracy`` (avg@k over the held-out problems), ``eval/entropy_proxy`` (mean sampled NLL per token)."""
    prompts = [format_prompt(tokenizer, p["prompt"] + instruction) for p in problems]
    out = engine.generate(
        prompts, n_samples=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, seed=seed,
    )  # fmt: skip
    answers = [problems[int(i)]["answer"] for i in out.group_index]
    correct = torch.tensor(scorer.score(out.response_text, answers), dtype=torch.float)  # (N,)
    mask = out.response_mask
    metrics = {
        "eval/accuracy": float(correct.mean()),
        "eval/response_length_mean": float(mask.sum(-1).mean()),
    }
    if out.sampling_logp is not None:
        metrics["eval/nll_per_token"] = float(-(out.sampling_logp * mask).sum() / mask.sum().clamp(min=1))
    return metrics
