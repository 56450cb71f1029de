"""Sampling-based evaluation of a policy on a list of problems: k samples each, verified, summarised.

Used by the training flow (held-out accuracy every K steps) and by the evaluation flow (benchmarks). Torch and the
verifier only: no Prefect, no MLflow, no I/O.
"""

from __future__ import annotations

from typing import Any

from steer.data import Problem
from steer.metrics import benchmark_metrics
from steer.models.loading import format_prompt
from steer.rollout.base import RolloutEngine
from steer.verifiers import extract_boxed


def evaluate_problems(
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
    """Sample ``k`` responses per problem, score them, and return (metrics, one row per response).

    Metrics: ``{prefix}/avg_at_{k}`` (mean correctness), ``{prefix}/pass_at_{j}`` for j in ``pass_ks`` (unbiased,
    Chen et al. 2021), ``{prefix}/maj_at_{k}`` (majority vote over boxed answers), ``{prefix}/response_length_mean``,
    ``{prefix}/truncated_frac``, ``{prefix}/verifier_errors`` (responses a verifier fault left scored wrong after
    the scorer's retries).
    """
    prompts = [format_prompt(tokenizer, p["prompt"] + instruction) for p in problems]
    out = engine.generate(
        prompts, n_samples=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    answers = [problems[int(i)]["answer"] for i in out.group_index]
    errors_before = scorer.num_errors
    correct = scorer.score(out.response_text, answers)  # (N,) prompt-major, k per problem
    verifier_errors = scorer.num_errors - errors_before
    by_problem = [correct[i * k : (i + 1) * k] for i in range(len(problems))]  # (P, k)
    boxed = [extract_boxed(t) for t in out.response_text]
    metrics = benchmark_metrics(
        by_problem, [boxed[i * k : (i + 1) * k] for i in range(len(problems))], pass_ks=pass_ks, prefix=prefix
    )
    lengths = out.response_mask.sum(-1)  # (N,)
    metrics[f"{prefix}/response_length_mean"] = float(lengths.float().mean())
    metrics[f"{prefix}/truncated_frac"] = float(out.truncated.float().mean())
    metrics[f"{prefix}/verifier_errors"] = float(verifier_errors)
    rows = [
        {
            "problem_id": problems[int(g)]["id"],
            "sample_index": int(s),
            "prompt": problems[int(g)]["prompt"],
            "response": text,
            "answer": str(problems[int(g)]["answer"]) if not isinstance(problems[int(g)]["answer"], dict) else "",
            "extracted": b,
            "correct": bool(c),
            "length": int(n),
            "truncated": bool(t),
        }
        for g, s, text, b, c, n, t in zip(
            out.group_index, out.sample_index, out.response_text, boxed, correct, lengths, out.truncated, strict=True
        )
    ]
    return metrics, rows
