"""Rollouts on disk: one Parquet file per training step, one row per response, written atomically.

Layout: ``<dir>/step=000123.parquet`` holds every response of step 123 (N = B*G rows). A step file is written to a
hidden temp file in the same folder, fsynced and renamed over the final name, so a killed process leaves either the
previous file or the new one, never a partial one; rewriting a step replaces it, so a resumed run that redoes a step
does not duplicate its rows. Readers (pyarrow, pandas, DuckDB's ``read_parquet('<dir>/step=*.parquet')``) never see
the temp files, whose names start with a dot.

The schema (``ROLLOUT_SCHEMA``) is documented column by column in ``docs/rollouts.md``. Token-level columns are lists
with exactly ``length`` entries: the response's padding is stripped. This module uses pyarrow and torch only.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from steer.fsutil import fsync_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
"""Stored in the Parquet metadata under ``steer.rollouts.version``; bump on an incompatible schema change."""

TOKEN_FLOAT_COLUMNS = ("old_logp", "entropy", "advantage", "omega", "steer_weight")
"""The float32 token-level list columns, in schema order (after ``token_ids``)."""

ROLLOUT_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        *(pa.field(name, pa.list_(pa.float32()), nullable=False) for name in TOKEN_FLOAT_COLUMNS),
    ],
    metadata={"steer.rollouts.version": SCHEMA_VERSION},
)
"""One row per response; see ``docs/rollouts.md`` for each column's meaning."""

_STEP_FILE = re.compile(r"^step=(\d+)\.parquet$")


def step_path(directory: str | os.PathLike, step: int) -> Path:
    """``<directory>/step=000123.parquet``: six digits, zero-padded, so names sort by step."""
    return Path(directory) / f"step={step:06d}.parquet"


def rollout_table(
    *,
    run_id: str,
    step: int,
    prompt_ids: Sequence[str],
    prompts: Sequence[str],
    answers: Sequence[str],
    group_index: Tensor,
    sample_index: Tensor,
    responses: Sequence[str],
    response_ids: Tensor,
    response_mask: Tensor,
    truncated: Tensor,
    rewards: Tensor,
    correct: Tensor,
    old_logp: Tensor,
    entropy: Tensor,
    advantage: Tensor,
    omega: Tensor,
    steer_weight: Tensor,
) -> pa.Table:
    """Build the step's table (N rows, ``ROLLOUT_SCHEMA``) from a rollout and its update's per-token tensors.

    Per-prompt inputs (B entries each) are expanded to responses through ``group_index``.

    Args:
        prompt_ids, prompts, answers: (B,) a stable id of each prompt, the prompt text as sampled from, the gold answer.
        group_index: (N,) the prompt row b of each response. sample_index: (N,) the sample g in 0..G-1.
        responses: (N,) decoded response texts.
        response_ids: (N, T) sampled token ids, right-padded. response_mask: (N, T) 1 on response tokens, 0 on padding.
        truncated: (N,) bool, the response hit the token limit. rewards: (N,). correct: (N,) bool.
        old_logp, entropy, advantage, omega, steer_weight: (N, T) token values; only the masked entries are stored.
            ``advantage`` is the per-token advantage used in the loss (an (N,) advantage broadcast over T).
    """
    n, t = response_ids.shape
    token_values = dict(old_logp=old_logp, entropy=entropy, advantage=advantage, omega=omega, steer_weight=steer_weight)
    for name, x in dict(response_mask=response_mask, **token_values).items():
        if tuple(x.shape) != (n, t):
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (N, T) = {(n, t)} like response_ids")
    per_response = dict(responses=responses, group_index=group_index, sample_index=sample_index, truncated=truncated)
    for name, seq in dict(per_response, rewards=rewards, correct=correct).items():
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, expected N = {n} (one per response)")
    b = len(prompt_ids)
    if len(prompts) != b or len(answers) != b:
        sizes = (b, len(prompts), len(answers))
        raise ValueError(f"prompt_ids, prompts and answers need one entry per prompt (B each): got {sizes}")

    valid = response_mask.detach().cpu().bool().numpy()  # (N, T)
    lengths = valid.sum(-1, dtype=np.int32)  # (N,)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])

    def tokens(x: Tensor, dtype: torch.dtype) -> pa.ListArray:
        # numpy's boolean indexing is ~30x faster than torch's here; row-major, so row n's tokens are contiguous
        flat = x.detach().cpu().to(dtype).numpy()[valid]  # (sum of lengths,)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))

    rows = group_index.detach().cpu().long().numpy()  # (N,)
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "step": pa.array(np.full(n, step, dtype=np.int64)),
        "prompt_id": pa.array([str(i) for i in prompt_ids], pa.string()).take(rows),
        "sample_index": pa.array(sample_index.detach().cpu().to(torch.int32).numpy()),
        "prompt": pa.array(list(prompts), pa.string()).take(rows),
        "response": pa.array(list(responses), pa.string()),
        "answer": pa.array([str(a) for a in answers], pa.string()).take(rows),
        "reward": pa.array(rewards.detach().cpu().to(torch.float32).numpy()),
        "correct": pa.array(correct.detach().cpu().bool().numpy()),
        "length": pa.array(lengths),
        "truncated": pa.array(truncated.detach().cpu().bool().numpy()),
        "token_ids": tokens(response_ids, torch.int32),
        **{name: tokens(x, torch.float32) for name, x in token_values.items()},
    }
    return pa.Table.from_arrays(list(columns.values()), schema=ROLLOUT_SCHEMA)


def write_step(directory: str | os.PathLike, step: int, table: pa.Table) -> Path:
    """Write ``table`` as ``<directory>/step=000123.parquet`` atomically, replacing any earlier file of that step.

    The table must have ``ROLLOUT_SCHEMA`` and every row ``step == step``. Returns the file's path.
    """
    if not table.schema.equals(ROLLOUT_SCHEMA):
        raise ValueError(f"table schema differs from ROLLOUT_SCHEMA (build it with rollout_table):\n{table.schema}")
    if table.num_rows and not pc.all(pc.equal(table["step"], step)).as_py():
        raise ValueError(f"table has rows whose step is not {step}: pass the step the rows were built with")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = step_path(directory, step)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, compression="zstd", compression_level=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(directory)
    return final


def finished_steps(directory: str | os.PathLike) -> list[int]:
    """Steps with a complete file in ``directory``, ascending; [] when the folder does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name)))


def read_rollouts(directory: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Every step's rows, in step order, as one table (``columns`` selects a subset; the token lists are the bulk).

    An empty or missing folder gives an empty table with the schema. A step file that cannot be read (damaged, or
    another schema) is skipped with a warning naming it: one bad old file does not hide the rest of the store.
    """
    schema = ROLLOUT_SCHEMA
    if columns is not None:
        schema = pa.schema([ROLLOUT_SCHEMA.field(c) for c in columns], metadata=ROLLOUT_SCHEMA.metadata)
    tables = []
    for s in finished_steps(directory):
        path = step_path(directory, s)
        try:
            tables.append(pq.read_table(path, columns=columns, schema=schema))
        except (pa.ArrowException, OSError) as e:
            log.warning(f"skipping {path}: it cannot be read as a rollout file ({type(e).__name__}: {e})")
    return pa.concat_tables(tables) if tables else schema.empty_table()


def remove_steps_after(directory: str | os.PathLike, step: int) -> list[int]:
    """Delete the files of steps > ``step`` and return those steps; also the temp files of killed writes.

    For a resume from the checkpoint of ``step``: the steps written after it belong to the interrupted run and are
    redone, and a resumed run configured with fewer steps must not keep them. A ``.step=*.parquet.*.tmp`` file is
    what a kill between a write and its rename leaves; nothing reads it, and the resume removes it.
    """
    removed = [s for s in finished_steps(directory) if s > step]
    for s in removed:
        step_path(directory, s).unlink()
    stale = list(Path(directory).glob(".step=*.parquet.*.tmp")) if Path(directory).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if removed or stale:
        fsync_path(Path(directory))
    return removed
