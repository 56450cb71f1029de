"""Rollout Parquet files: schema, stripped padding, atomic and idempotent writes, the queries of docs/rollouts.md."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steer.rollout_store import (
    ROLLOUT_SCHEMA,
    TOKEN_FLOAT_COLUMNS,
    finished_steps,
    read_rollouts,
    remove_steps_after,
    rollout_table,
    step_path,
    write_step,
)

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rollouts.md"


def make_inputs(step: int, lengths: list[int], g: int, t: int, seed: int = 0) -> dict:
    """A rollout of B = len(lengths) // g prompts x g samples; token values are distinct so misplacement shows."""
    n = len(lengths)
    b = n // g
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).float()  # (N, T)
    ids = torch.randint(3, 1000, (n, t), generator=gen) * mask.long()  # (N, T), 0 on padding
    values = {name: torch.randn(n, t, generator=gen) * mask for name in TOKEN_FLOAT_COLUMNS}
    return dict(
        run_id="run-a",
        step=step,
        prompt_ids=[f"p{i}" for i in range(b)],
        prompts=[f"What is {i}+1?" for i in range(b)],
        answers=[str(i + 1) for i in range(b)],
        group_index=torch.arange(n) // g,
        sample_index=torch.arange(n) % g,
        responses=[f"r{k}" for k in range(n)],
        response_ids=ids,
        response_mask=mask,
        truncated=torch.tensor(lengths) == t,
        rewards=torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0),
        correct=torch.arange(n) % 2 == 0,
        **values,
    )


def test_rows_hold_each_response_with_padding_stripped():
    lengths = [3, 5, 1, 4, 5, 2]
    inp = make_inputs(step=7, lengths=lengths, g=2, t=5)
    table = rollout_table(**inp)
    assert table.schema.equals(ROLLOUT_SCHEMA)
    rows = table.to_pylist()
    assert [r["prompt_id"] for r in rows] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert [r["answer"] for r in rows] == ["1", "1", "2", "2", "3", "3"]
    assert [r["sample_index"] for r in rows] == [0, 1, 0, 1, 0, 1]
    assert [r["length"] for r in rows] == lengths
    assert [r["truncated"] for r in rows] == [False, True, False, False, True, False]
    assert [r["reward"] for r in rows] == [1.0, -1.0] * 3
    for k, r in enumerate(rows):
        assert r["token_ids"] == inp["response_ids"][k, : lengths[k]].tolist()
        for name in TOKEN_FLOAT_COLUMNS:
            np.testing.assert_array_equal(np.float32(r[name]), inp[name][k, : lengths[k]].numpy())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_round_trip_through_parquet_keeps_masked_tokens(lengths, seed):
    inp = make_inputs(step=1, lengths=lengths, g=1, t=6, seed=seed)
    inp["response_mask"] = torch.rand(len(lengths), 6, generator=torch.Generator().manual_seed(seed)) > 0.5  # holes
    table = rollout_table(**inp)
    for k, row in enumerate(table.to_pylist()):
        keep = inp["response_mask"][k]
        assert row["length"] == int(keep.sum()) == len(row["token_ids"]) == len(row["omega"])
        np.testing.assert_array_equal(np.float32(row["steer_weight"]), inp["steer_weight"][k][keep].numpy())


def test_shape_mismatch_names_the_argument():
    inp = make_inputs(step=0, lengths=[2, 2], g=2, t=3)
    inp["omega"] = inp["omega"][:, :2]
    with pytest.raises(ValueError, match=r"omega has shape \(2, 2\), expected \(N, T\) = \(2, 3\)"):
        rollout_table(**inp)
    inp = make_inputs(step=0, lengths=[2, 2], g=2, t=3)
    inp["responses"] = ["only one"]
    with pytest.raises(ValueError, match="responses has 1 entries, expected N = 2"):
        rollout_table(**inp)


def test_write_read_and_rewrite_is_idempotent(tmp_path):
    for step in (2, 0, 1):
        write_step(tmp_path, step, rollout_table(**make_inputs(step, [2, 3, 1, 2], g=2, t=3, seed=step)))
    assert finished_steps(tmp_path) == [0, 1, 2]
    assert step_path(tmp_path, 2).name == "step=000002.parquet"
    again = rollout_table(**make_inputs(1, [1, 1], g=2, t=3, seed=9))
    write_step(tmp_path, 1, again)  # a resumed run redoing step 1 with a different batch
    table = read_rollouts(tmp_path)
    assert table.column("step").to_pylist() == [0] * 4 + [1] * 2 + [2] * 4
    assert table.filter(pc.equal(table["step"], 1)).column("length").to_pylist() == [1, 1]
    assert sorted(os.listdir(tmp_path)) == [f"step=00000{s}.parquet" for s in (0, 1, 2)]  # no temp files left
    assert pq.read_metadata(step_path(tmp_path, 0)).metadata[b"steer.rollouts.version"] == b"1"


def test_one_corrupt_old_file_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    for step in (0, 1, 2):
        write_step(tmp_path, step, rollout_table(**make_inputs(step, [2, 1], g=1, t=2, seed=step)))
    step_path(tmp_path, 1).write_bytes(b"PAR1 not a parquet file PAR1")
    with caplog.at_level("WARNING", logger="steer.rollout_store"):
        table = read_rollouts(tmp_path)
    assert table.column("step").to_pylist() == [0, 0, 2, 2]
    assert f"skipping {step_path(tmp_path, 1)}" in caplog.text


def test_read_subset_and_empty_folder(tmp_path):
    assert read_rollouts(tmp_path / "missing").schema.equals(ROLLOUT_SCHEMA)
    assert finished_steps(tmp_path / "missing") == []
    write_step(tmp_path, 4, rollout_table(**make_inputs(4, [1, 2], g=1, t=2)))
    sub = read_rollouts(tmp_path, columns=["step", "correct"])
    assert sub.column_names == ["step", "correct"] and sub.to_pydict() == {"step": [4, 4], "correct": [True, False]}


KILLED_WRITER = """
import sys, torch
from steer.rollout_store import rollout_table, write_step, TOKEN_FLOAT_COLUMNS
n, t = 64, 2048
mask = torch.ones(n, t)
for k in range(10_000):
    fill = float(k % 2)  # alternate two contents, so a torn file would mix them
    table = rollout_table(run_id="r", step=0, prompt_ids=["p"], prompts=["q"], answers=["a"],
        group_index=torch.zeros(n, dtype=torch.long), sample_index=torch.arange(n), responses=["x"] * n,
        response_ids=torch.ones(n, t, dtype=torch.long), response_mask=mask, truncated=torch.zeros(n, dtype=torch.bool),
        rewards=torch.zeros(n), correct=torch.zeros(n, dtype=torch.bool),
        **{c: torch.full((n, t), fill) for c in TOKEN_FLOAT_COLUMNS})
    write_step(sys.argv[1], 0, table)
    if k == 1:
        print("ready", flush=True)
"""


def test_killed_writer_never_leaves_a_partial_file(tmp_path):
    """SIGKILL a process that keeps rewriting step 0: the file that remains is one complete version."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert finished_steps(tmp_path) == [0]
    table = read_rollouts(tmp_path)
    assert table.num_rows == 64
    values = set(np.concatenate(table.column("omega").to_pylist()).tolist())
    assert values in ({0.0}, {1.0})
    assert all(name.startswith(".") for name in os.listdir(tmp_path) if name != "step=000000.parquet")


def test_write_rejects_foreign_schema_and_wrong_step(tmp_path):
    table = rollout_table(**make_inputs(5, [1, 1], g=2, t=1))
    with pytest.raises(ValueError, match="rows whose step is not 6"):
        write_step(tmp_path, 6, table)
    with pytest.raises(ValueError, match="schema differs"):
        write_step(tmp_path, 5, table.drop_columns(["omega"]))
    assert finished_steps(tmp_path) == []


def test_remove_steps_after(tmp_path):
    for step in range(4):
        write_step(tmp_path, step, rollout_table(**make_inputs(step, [1, 1], g=2, t=1)))
    stale = tmp_path / ".step=000002.parquet.k3j9x.tmp"  # a kill between a temp write and its rename
    stale.write_bytes(b"partial")
    assert remove_steps_after(tmp_path, 1) == [2, 3]
    assert finished_steps(tmp_path) == [0, 1] and not stale.exists()


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_docs_queries_run(tmp_path):
    """The pandas and DuckDB examples of docs/rollouts.md run on real files and agree with a direct computation."""
    lengths = {0: [1, 2, 3, 4], 1: [4, 4, 2, 1]}
    for step, ls in lengths.items():
        write_step(tmp_path, step, rollout_table(**make_inputs(step, ls, g=2, t=4, seed=step)))
    table = read_rollouts(tmp_path)
    expected_weight = [
        float(np.concatenate(table.filter(pc.equal(table["step"], s)).column("steer_weight").to_pylist()).mean())
        for s in (0, 1)
    ]

    python_blocks = [b.replace("runs/demo/rollouts", str(tmp_path)) for b in _code_blocks("python")]
    scope: dict = {}
    for block in python_blocks:
        exec(block, scope)
    assert scope["table"].column_names == ["step", "reward", "correct"]
    assert scope["accuracy"].to_dict() == {0: 0.5, 1: 0.5}
    assert len(scope["top"]) == 4 and set(scope["top"].step) == {1}

    per_step, low_share = (duckdb.sql(q.replace("runs/demo/rollouts", str(tmp_path))).df() for q in _code_blocks("sql"))
    assert per_step.step.tolist() == [0, 1]
    assert per_step.accuracy.tolist() == [0.5, 0.5]
    assert per_step.mean_length.tolist() == [2.5, 2.75]
    np.testing.assert_allclose(per_step.mean_steer_weight, expected_weight, rtol=1e-6)
    assert len(low_share) == 2 and ((low_share.low_weight_share >= 0) & (low_share.low_weight_share <= 1)).all()
