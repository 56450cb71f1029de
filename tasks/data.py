"""Prefect tasks that prepare what a run reads: the problems and the initial policy."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from steer.config import DataConfig, ModelConfig
from steer.data import ArithmeticTask, ColumnMap, Problem, heldout_problems, load_problems, train_problems
from steer.models.loading import resolve_policy
from steer.runtime import cache_dir


def _write(path: Path, problems: list[Problem]) -> None:
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(problems), tmp)
    tmp.replace(path)


@task(name="prepare-data", retries=2, retry_delay_seconds=[2, 10])
def prepare_data(cfg: DataConfig, output_dir: str) -> dict[str, str]:
    """Write the training and held-out problems to ``<output_dir>/data/*.parquet``; returns their paths.

    Reuses the files of an earlier (resumed) run. Retried: a hub source touches the network.
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
            problems = load_problems(cfg.source, columns=columns, split=cfg.split)
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


@task(name="prepare-policy", retries=2, retry_delay_seconds=[2, 10])
def prepare_policy(cfg: ModelConfig) -> str:
    """The folder (or hub id) the policy loads from: builds and caches an embedded policy on first use."""
    return resolve_policy(cfg.name_or_path, cache_dir())
