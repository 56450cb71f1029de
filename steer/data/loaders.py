"""Load training or evaluation problems from a Hugging Face hub dataset or a local Parquet / JSONL / JSON file.

Every source becomes the same records as the embedded task, ``{"id", "prompt", "answer", "task"}``, through a
``ColumnMap`` that names where each field lives in a row:

- a key may be dotted to reach into nested structs: ``"reward_model.ground_truth"``;
- a prompt stored as a chat (a list of ``{"role", "content"}`` messages, the verl/DAPO layout) becomes the content
  of its last user message, so the caller applies its own chat template;
- without ``id_key`` a row's id is ``"<task>/<row number>"``;
- a row with an empty prompt or a missing answer is skipped and counted, with its row number
  (``steer.data.validation``): a warning says how many and which, ``bad_rows`` collects them.

Known hub datasets have their map in ``KNOWN_COLUMN_MAPS`` (used when ``columns`` is not given)::

    load_problems("BytedTsinghua-SIA/DAPO-Math-17k")                 # prompt, reward_model.ground_truth
    load_problems("data/train.parquet", columns=ColumnMap(prompt_key="question", answer_key="solution"))
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer.data.embedded import Problem
from steer.data.validation import BadRows, row_problem

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class ColumnMap:
    """Where the record fields come from in a source row."""

    prompt_key: str = "prompt"
    """Column holding the problem: a string, or a chat (list of role/content messages; the last user turn is used)."""
    answer_key: str = "answer"
    """Column holding the reference answer (converted to str); dotted for nested fields."""
    id_key: str | None = None
    """Column holding a unique id (converted to str); None numbers the rows instead."""
    task: str | None = None
    """Value of each record's ``task`` field; None uses the source's name (hub id or file stem)."""


KNOWN_COLUMN_MAPS: dict[str, ColumnMap] = {
    "BytedTsinghua-SIA/DAPO-Math-17k": ColumnMap(
        prompt_key="prompt", answer_key="reward_model.ground_truth", id_key="extra_info.index", task="dapo_math"
    ),
}


def load_problems(
    source: str | os.PathLike,
    *,
    columns: ColumnMap | None = None,
    split: str = "train",
    limit: int | None = None,
    bad_rows: BadRows | None = None,
) -> list[Problem]:
    """Problems from ``source``: a local ``.parquet``/``.jsonl``/``.json`` file, or else a hub dataset id.

    Args:
        source: file path, or a hub id such as ``"BytedTsinghua-SIA/DAPO-Math-17k"`` (loaded with
            ``datasets.load_dataset(source, split=split)``).
        columns: column mapping; defaults to ``KNOWN_COLUMN_MAPS[source]`` or ``ColumnMap()``.
        split: hub split (ignored for local files).
        limit: keep the first ``limit`` rows.
        bad_rows: collects the skipped rows (empty prompt, missing answer) by reason, with their row numbers.
    Raises:
        KeyError: a mapped column is missing (the message lists the row's columns and the ColumnMap field to set).
        ConnectionError: the hub could not be reached or the dataset was not found (the message says how to pass a
            local file instead).
    """
    columns = columns or KNOWN_COLUMN_MAPS.get(str(source), ColumnMap())
    path = Path(source)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        rows = _read_local(path)
        task = columns.task or path.stem
    else:
        rows = _read_hub(str(source), split)
        task = columns.task or str(source).rsplit("/", 1)[-1]
    problems, bad, total = [], BadRows() if bad_rows is None else bad_rows, 0
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        total += 1
        problem = row_to_problem(row, columns, index=i, task=task, source=str(source))
        if isinstance(problem, str):
            bad.add(problem, i)
        else:
            problems.append(problem)
    if bad.count:
        log.warning(bad.summary(str(source), total))
    if total and not problems:
        raise ValueError(f"no usable rows left: {bad.summary(str(source), total)}")
    return problems


def row_to_problem(
    row: dict[str, Any], columns: ColumnMap, *, index: int, task: str, source: str = ""
) -> Problem | str:
    """One source row to a record with ``columns``; ``index`` numbers rows when ``columns.id_key`` is None. A row
    that cannot be trained on gives the reason instead (``steer.data.validation.row_problem``)."""
    prompt = _prompt_text(_lookup(row, columns.prompt_key, "prompt_key", source))
    answer = _lookup(row, columns.answer_key, "answer_key", source)
    if reason := row_problem(prompt, answer):
        return reason
    pid = _lookup(row, columns.id_key, "id_key", source) if columns.id_key else f"{task}/{index}"
    return {"id": str(pid), "prompt": prompt, "answer": str(answer), "task": task}


def _lookup(row: dict[str, Any], key: str, field: str, source: str) -> Any:
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            found = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise KeyError(
                f"{source or 'source'}: column {key!r} (ColumnMap.{field}) not found; the row has {found}. "
                f"Pass columns=ColumnMap({field}=...) naming the right column (dotted for nested fields)."
            )
        value = value[part]
    return value


def _prompt_text(value: Any) -> str:
    if value is None:
        return ""  # an empty prompt: skipped and counted
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        users = [m for m in value if m.get("role", "user") == "user"] or value
        return str(users[-1]["content"])
    raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(value).__name__}")


def _read_local(path: Path) -> Iterable[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json data file must hold a list of rows (or {{'data': [...]}})")
        return data
    raise ValueError(f"{path}: unsupported data file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")


def _read_hub(name: str, split: str) -> Iterable[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise ConnectionError(
            f"could not load dataset {name!r} split {split!r} from the Hugging Face hub{hint}: {e}. "
            "Check the id and the network, or download it and pass a local .parquet/.jsonl path instead."
        ) from e
