"""Problem sources: the embedded reasoning-gym task and the hub / local-file loaders."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steer.data import ArithmeticTask, ColumnMap, heldout_problems, load_problems, train_problems  # noqa: E402
from steer.data.loaders import KNOWN_COLUMN_MAPS  # noqa: E402

pytestmark = pytest.mark.unit

TASK = ArithmeticTask()


def test_train_problems_are_seeded_records():
    a, b = train_problems(TASK, 50), train_problems(TASK, 50)
    assert a == b
    assert set(a[0]) == {"id", "prompt", "answer", "task"} and all(isinstance(v, str) for v in a[0].values())
    assert a[0]["id"] == "basic_arithmetic/0/0" and a[0]["prompt"].startswith("Calculate ")
    assert len({p["id"] for p in a}) == 50
    assert eval(a[3]["prompt"].removeprefix("Calculate ").rstrip(".")) == int(a[3]["answer"])  # noqa: S307


def test_heldout_is_disjoint_from_training():
    train = train_problems(TASK, 2000)
    held = heldout_problems(TASK, 100, exclude=train)
    assert len(held) == 100 and len({p["prompt"] for p in held}) == 100
    assert not {p["prompt"] for p in held} & {p["prompt"] for p in train}
    assert all(p["id"].startswith(f"basic_arithmetic/{TASK.heldout_seed}/") for p in held)


def _dapo_rows():
    return [
        {
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"What is {i}+1?"}],
            "reward_model": {"ground_truth": str(i + 1), "style": "rule"},
            "extra_info": {"index": f"uuid-{i}"},
        }
        for i in range(5)
    ]


def test_local_parquet_with_nested_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(_dapo_rows()), path)
    problems = load_problems(path, columns=KNOWN_COLUMN_MAPS["BytedTsinghua-SIA/DAPO-Math-17k"], limit=3)
    assert problems == [
        {"id": f"uuid-{i}", "prompt": f"What is {i}+1?", "answer": str(i + 1), "task": "dapo_math"} for i in range(3)
    ]


def test_local_jsonl_flat_columns_and_row_ids(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "solution": i}) for i in range(4)) + "\n")
    problems = load_problems(path, columns=ColumnMap(prompt_key="question", answer_key="solution"))
    assert [p["id"] for p in problems] == ["mine/0", "mine/1", "mine/2", "mine/3"]
    assert problems[2] == {"id": "mine/2", "prompt": "q2", "answer": "2", "task": "mine"}


def test_missing_column_names_the_field_and_the_fix(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "q", "solution": 1}) + "\n")
    with pytest.raises(KeyError, match=r"'prompt' \(ColumnMap.prompt_key\) not found.*\['question', 'solution'\]"):
        load_problems(path)
    with pytest.raises(KeyError, match=r"ColumnMap.answer_key"):
        load_problems(path, columns=ColumnMap(prompt_key="question", answer_key="reward_model.ground_truth"))


def test_unreachable_hub_says_what_to_do():
    with pytest.raises(ConnectionError, match="pass a local .parquet/.jsonl path"):
        load_problems("BytedTsinghua-SIA/DAPO-Math-17k")


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_problems(tmp_path / "absent.parquet")
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data file type"):
        load_problems(bad)
