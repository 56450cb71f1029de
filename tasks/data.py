"""Prefect tasks that prepare what a run reads: the problems and the initial policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task

from steer.config import DataConfig, ModelConfig
from steer.data import ArithmeticTask, ColumnMap, Problem, heldout_problems, load_problems, train_problems
from steer.data.validation import BadRows, drop_overlong
from steer.models.loading import format_prompt, resolve_policy
from steer.runtime import Runtime, cache_dir

DETERMINISTIC_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, NotADirectoryError)
"""Errors a retry cannot fix (bad rows, a missing column, a wrong path): they fail at once, with their message."""


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry network and I/O faults, not deterministic errors."""
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(error, DETERMINISTIC_ERRORS)


def _write(path: Path, problems: list[Problem]) -> None:
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(problems), tmp)
    tmp.replace(path)


@task(name="prepare-data", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def prepare_data(cfg: DataConfig, output_dir: str) -> dict[str, str]:
    """Write the training and held-out problems to ``<output_dir>/data/*.parquet``; returns their paths.

    Reuses the files of an earlier (resumed) run. Retried on network faults (a hub source), not on bad data. Rows
    with an empty prompt or a missing answer are skipped: their count and row numbers are warned and written to
    ``<output_dir>/data/bad_rows.json``.
    """
    folder = Path(output_dir) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.parquet", "heldout": folder / "heldout.parquet"}
    if not all(p.exists() for p in paths.values()):
        if cfg.source == "embedded":
            task_spec = ArithmeticTask()
            train = train_problems(task_spec, cfg.train_size)
            # unseen_heldout: only prompts that never occur in training (the task has ~5.6k distinct problems and
            # the warm-start saw most); otherwise a fresh draw from the task distribution, disjoint in instances
            heldout = heldout_problems(task_spec, cfg.heldout_size, exclude=train if cfg.unseen_heldout else None)
        else:
            keys = dict(prompt_key=cfg.prompt_key, answer_key=cfg.answer_key, id_key=cfg.id_key)
            columns = ColumnMap(**{k: v for k, v in keys.items() if v is not None}) if any(keys.values()) else None
            bad = BadRows()
            problems = load_problems(cfg.source, columns=columns, split=cfg.split, bad_rows=bad)
            if bad.count:
                (folder / "bad_rows.json").write_text(json.dumps({"source": cfg.source, **bad.as_dict()}, indent=1))
            if len(problems) <= cfg.heldout_size:
                raise ValueError(
                    f"data.heldout_size={cfg.heldout_size} leaves no training problems out of {len(problems)} in "
                    f"{cfg.source}: lower data.heldout_size"
                )
            heldout, train = problems[: cfg.heldout_size], problems[cfg.heldout_size :]
        _write(paths["train"], train)
        _write(paths["heldout"], heldout)
    return {k: str(v) for k, v in paths.items()}


def read_problems(path: str) -> list[Problem]:
    return pq.read_table(path).to_pylist()


def fit_context(problems: list[Problem], rt: Runtime, name: str) -> list[Problem]:
    """Drop the problems whose prompt cannot fit the model's context with the run's longest response, warned with
    their row numbers; ``name`` says which set ("train", "heldout")."""
    cfg = rt.config
    context = getattr(rt.model.config, "max_position_embeddings", None)
    longest = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens)

    def prompt_tokens(prompt: str) -> int:
        return len(rt.tokenizer(format_prompt(rt.tokenizer, prompt + cfg.data.instruction))["input_ids"])

    kept, bad = drop_overlong(problems, prompt_tokens, context, longest)
    if bad.count:
        message = bad.summary(
            f"data/{name}.parquet (context {context} tokens, responses up to {longest})", len(problems)
        )
        if not kept:
            raise ValueError(f"no usable rows left: {message}")
        get_run_logger().warning(message)
    return kept


@task(name="prepare-policy", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def prepare_policy(cfg: ModelConfig) -> str:
    """The folder (or hub id) the policy loads from: builds and caches an embedded policy on first use."""
    return resolve_policy(cfg.name_or_path, cache_dir())
