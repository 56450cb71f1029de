"""The experiment-tracking interface the training loop logs through, and a tracker that stores nothing.

``Tracker`` is what the loop calls; ``NullTracker`` keeps ``if tracking:`` out of it (the role of nanoGPT's
``DummyWandb``); ``tasks.tracking.MlflowTracker`` is the MLflow implementation. The helpers here define the naming
rules every tracker applies, so a bad metric name fails the same way with or without MLflow:

- metric names match ``[a-z0-9_/.-]+`` and sit in a namespace (``actor/*``, ``reward/*``, ``rollout/*``, ``steer/*``,
  ``timing/*``, ``perf/*``, see docs/CONTRACTS.md); MLflow itself rejects some characters (``@``, ``()``);
- a nested config becomes flat ``section.key`` params with string values.

No MLflow import here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, SupportsFloat, runtime_checkable

METRIC_NAME = re.compile(r"[a-z0-9_/.\-]+")
"""What a metric name may contain (the whole name must match)."""

MAX_NAME_LENGTH = 250
"""MLflow's limit on metric and param key lengths."""


@runtime_checkable
class Tracker(Protocol):
    """Where a training run's params, per-step metrics and artifacts go."""

    @property
    def run_id(self) -> str:
        """The run's id (also written into the rollouts' ``run_id`` column)."""
        ...

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record a (nested) config once per run; re-logging equal values is a no-op, changing one is an error."""
        ...

    def log_metrics(self, metrics: Mapping[str, SupportsFloat], step: int) -> None:
        """Record scalar metrics (floats or 0-d tensors) of training step ``step``."""
        ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file, or a folder with its contents, to the run's artifacts under ``artifact_path``."""
        ...

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set free-form run tags (values become strings); a tag may be overwritten."""
        ...

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED); calling it again does nothing."""
        ...


class NullTracker:
    """A tracker that stores nothing but checks its inputs like a real one, so bad names fail in every test."""

    def __init__(self, run_id: str = "untracked") -> None:
        self._run_id = run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flatten_params(params)

    def log_metrics(self, metrics: Mapping[str, SupportsFloat], step: int) -> None:
        check_metric_names(metrics)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


@contextmanager
def closing_run(tracker: Tracker) -> Iterator[Tracker]:
    """Close ``tracker``'s run when the block ends: FINISHED when it completes, FAILED on an error, KILLED on an
    interrupt (Ctrl-C, SIGTERM turned into an exception by Prefect, ``SystemExit``), so that a run cut short never
    reads as finished in the tracking UI. The error itself becomes the run's ``steer.error`` tag."""
    try:
        yield tracker
    except Exception as e:
        _record_error(tracker, e)
        tracker.close("FAILED")
        raise
    except BaseException as e:
        _record_error(tracker, e)
        tracker.close("KILLED")
        raise
    tracker.close("FINISHED")


def _record_error(tracker: Tracker, error: BaseException) -> None:
    """Tag the run with what ended it (``steer.error``); best effort: the original error is the one that counts."""
    try:
        tracker.set_tags({"steer.error": f"{type(error).__name__}: {error}"[:5000]})
    except Exception:
        pass


def sanitize_metric_name(name: str) -> str:
    """The nearest valid name: lower case, each run of other characters replaced by ``_``."""
    return re.sub(r"[^a-z0-9_/.\-]+", "_", name.lower()).strip("_") or "_"


METRIC_ALIASES: dict[str, str] = {
    "actor/clipfrac": "actor/pg_clipfrac",
    "actor/clipfrac_lower": "actor/pg_clipfrac_lower",
}
"""Our metric -> the name verl logs for the same quantity, where the two differ only in spelling; both are logged, so
dashboards and queries written for verl find it (docs/metrics.md maps the names that differ more)."""


def with_aliases(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` plus each ``METRIC_ALIASES`` alias of a metric it holds (same value)."""
    out = dict(metrics)
    out.update({alias: metrics[name] for name, alias in METRIC_ALIASES.items() if name in metrics})
    return out


def check_metric_names(names: Mapping[str, Any] | list[str]) -> None:
    """Raise a ValueError listing every name that is not ``[a-z0-9_/.-]+`` (or is too long), with a fix for each."""
    bad = [n for n in names if not (isinstance(n, str) and METRIC_NAME.fullmatch(n) and len(n) <= MAX_NAME_LENGTH)]
    if bad:
        fixes = ", ".join(f"{n!r} -> {sanitize_metric_name(str(n))[:MAX_NAME_LENGTH]!r}" for n in bad)
        raise ValueError(
            f"metric names must match [a-z0-9_/.-]+ (at most {MAX_NAME_LENGTH} characters) and sit in a namespace "
            f"such as 'actor/' or 'steer/'; rename: {fixes}"
        )


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping to ``{"section.key": str(value)}``, e.g. ``{"opt": {"lr": 1e-6}}`` -> ``{"opt.lr":
    "1e-06"}``. Lists and other values are kept whole as ``str(value)``; an empty mapping gives no param."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"config key {prefix + str(key)!r} must be a non-empty string without '.' (the separator)")
        name = prefix + key
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=name + "."))
        else:
            if len(name) > MAX_NAME_LENGTH:
                raise ValueError(f"param name {name!r} is longer than {MAX_NAME_LENGTH} characters: shorten the key")
            flat[name] = str(value)
    return flat
