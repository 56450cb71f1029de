"""Prefect tasks that take their arguments by reference.

Before a task runs, Prefect walks every argument (``visit_collection``: into lists, dicts, dataclasses and pydantic
models) to find futures to wait for and to record the run's inputs. The arguments of one RL step are large nested
objects (the runtime, the config, a rollout of N rows of tensors), and that walk costs ~14 ms per task run on the
2-core CPU against ~3.5 ms for the rest of Prefect's bookkeeping (``bench/bench_vs_trl.py``, docs/performance.md).
A ``by_reference`` task wraps each argument in ``prefect.utilities.annotations.quote``, so Prefect passes it through
untouched; the function receives the very objects it was called with. What that gives up: a future passed as an
argument is not resolved (the step tasks never receive futures), and the UI shows no input lineage for the task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.utilities.annotations import quote


def _quoted(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return tuple(quote(a) for a in args), {k: quote(v) for k, v in kwargs.items()}


class ByReferenceTask(Task):
    """A ``prefect.Task`` whose call and ``submit`` pass every argument through unvisited (module docstring)."""

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        args, kwargs = _quoted(args, kwargs)
        return super().__call__(*args, return_state=return_state, wait_for=wait_for, **kwargs)

    def submit(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        args, kwargs = _quoted(args, kwargs)
        return super().submit(*args, return_state=return_state, wait_for=wait_for, **kwargs)

    def with_options(self, **options: Any) -> ByReferenceTask:
        new = super().with_options(**options)
        new.__class__ = ByReferenceTask
        return new


def by_reference(**options: Any) -> Callable[[Callable], ByReferenceTask]:
    """``@by_reference(name=..., retries=...)``: ``@prefect.task(...)`` with the arguments passed by reference."""

    def decorate(fn: Callable) -> ByReferenceTask:
        return ByReferenceTask(fn=fn, **options)

    return decorate
