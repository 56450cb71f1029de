"""Scoring fan-out: the verifier on this machine's process pool (the default), or on Prefect's Ray or Dask task runner.

``make_scorer(verifier, scoring)`` returns an object with the scorer interface (``steer.verifiers``: a context manager,
``score(responses, answers) -> list[bool]``, ``num_errors``, ``last_error``), so the training and evaluation flows do
not change with the runner:

- ``pool``: ``VERIFIERS.get(verifier)(...)`` itself (``MathScorer``'s watchdog pool, ``CodeScorer``'s sandboxes);
- ``ray`` / ``dask``: ``FanoutScorer``, which splits a call into chunks of ``scoring.chunk_size`` responses and submits
  one ``verify-chunk`` Prefect task per chunk to a ``RayTaskRunner`` / ``DaskTaskRunner`` (a local cluster of
  ``scoring.num_workers`` workers started for the run and shut down on exit, or ``scoring.address``). In each cluster
  worker the task keeps one verifier of the same class (its guards included: MathScorer's hard time limit, memory cap
  and fault retries) for the life of the worker process, so a chunk costs no interpreter start. Verdicts come back in
  order; a chunk whose task fails after its retry raises out of ``score`` (the caller's task retries the call).

The cluster workers report their task runs to the Prefect API of the caller (its URL is passed in their environment)
and import this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from steer import choices
from steer.config import ScoringConfig
from steer.registry import Registry
from steer.verifiers import VERIFIERS

ROOT = str(Path(__file__).resolve().parents[1])
DEFAULT_CLUSTER_WORKERS = 2
_WORKER_SCORERS: dict[tuple[str, int], Any] = {}  # in a cluster worker: (verifier, processes) -> its scorer


@task(name="verify-chunk", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def verify_chunk(verifier: str, responses: list[str], answers: list[Any], processes: int) -> dict:
    """Score one chunk in a cluster worker with that worker's own verifier (made once per worker process)."""
    key = (verifier, processes)
    if key not in _WORKER_SCORERS:
        scorer = VERIFIERS.get(verifier)(num_workers=processes)
        atexit.register(scorer.close)
        _WORKER_SCORERS[key] = scorer
    scorer = _WORKER_SCORERS[key]
    before = scorer.num_errors
    correct = scorer.score(responses, answers)
    return {"correct": correct, "errors": scorer.num_errors - before, "last_error": getattr(scorer, "last_error", None)}


def _worker_env() -> dict[str, str]:
    """What a cluster worker needs: this checkout on its path and the caller's Prefect API."""
    from prefect.settings import get_current_settings

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    api_url = get_current_settings().api.url
    if api_url:
        env["PREFECT_API_URL"] = str(api_url)
    return env


TASK_RUNNERS: Registry[Callable[[ScoringConfig], Any]] = Registry("scoring runner", choices.SCORING_RUNNERS)
"""Runner name -> ``(scoring) -> a Prefect task runner`` (``pool`` needs none: it is the verifier itself)."""


@TASK_RUNNERS.register("ray")
def _ray_runner(scoring: ScoringConfig):
    from prefect_ray import RayTaskRunner

    if scoring.address:
        return RayTaskRunner(address=scoring.address, init_kwargs={"runtime_env": {"env_vars": _worker_env()}})
    workers = scoring.num_workers or DEFAULT_CLUSTER_WORKERS
    init = {"num_cpus": workers, "include_dashboard": False, "runtime_env": {"env_vars": _worker_env()}}
    return RayTaskRunner(init_kwargs=init)


@TASK_RUNNERS.register("dask")
def _dask_runner(scoring: ScoringConfig):
    from prefect_dask import DaskTaskRunner

    if scoring.address:
        return DaskTaskRunner(address=scoring.address)
    workers = scoring.num_workers or DEFAULT_CLUSTER_WORKERS
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    return DaskTaskRunner(cluster_kwargs={**cluster, "env": _worker_env()})


@TASK_RUNNERS.register("pool")
def _no_runner(scoring: ScoringConfig):
    return None


class FanoutScorer:
    """The scorer interface over a Prefect task runner (module docstring). Use as a context manager."""

    def __init__(self, verifier: str, scoring: ScoringConfig):
        VERIFIERS.get(verifier)  # an unknown name fails here, before a cluster starts
        self.verifier, self.scoring = verifier, scoring
        self.num_errors = 0
        self.last_error: str | None = None
        self._runner = None

    def __enter__(self) -> FanoutScorer:
        self._runner = TASK_RUNNERS.get(self.scoring.runner)(self.scoring)
        self._runner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.__exit__(None, None, None)

    def score(self, responses: Sequence[str], answers: Sequence[Any]) -> list[bool]:
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers")
        if self._runner is None:
            raise RuntimeError("FanoutScorer.score outside its `with` block: the cluster is not running")
        size = self.scoring.chunk_size
        futures = [
            self._runner.submit(
                verify_chunk,
                {
                    "verifier": self.verifier,
                    "responses": list(responses[i : i + size]),
                    "answers": list(answers[i : i + size]),
                    "processes": self.scoring.verifier_processes,
                },
            )
            for i in range(0, len(responses), size)
        ]
        out: list[bool] = []
        for future in futures:
            result = future.result()
            out += result["correct"]
            self.num_errors += result["errors"]
            self.last_error = result["last_error"] or self.last_error
        return out


def make_scorer(verifier: str, scoring: ScoringConfig | None = None):
    """The run's scorer: the verifier's own pool (``scoring.runner == "pool"``, the default) or a ``FanoutScorer``."""
    scoring = scoring or ScoringConfig()
    if scoring.runner == "pool":
        cls = VERIFIERS.get(verifier)
        return cls() if scoring.num_workers is None else cls(num_workers=scoring.num_workers)
    return FanoutScorer(verifier, scoring)
