"""Bad data rows (empty prompts, missing answers, prompts longer than the context) are skipped and counted with their
row numbers, never trained on; a config with an unknown rollout backend fails when it is validated."""

from __future__ import annotations

import json

import pytest

from steer.config import ConfigError, load_config
from steer.data import load_problems
from steer.data.validation import EMPTY_PROMPT, MISSING_ANSWER, OVERLONG_PROMPT, BadRows, drop_overlong

pytestmark = pytest.mark.unit


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_empty_prompts_and_missing_answers_are_skipped_with_row_numbers(tmp_path, caplog):
    rows = [{"prompt": "1 + 1", "answer": "2"}] * 6
    rows[1] = {"prompt": "   ", "answer": "3"}
    rows[3] = {"prompt": "2 + 2", "answer": None}
    rows[4] = {"prompt": None, "answer": "1"}
    rows[5] = {"prompt": "3 + 3", "answer": ""}
    bad = BadRows()
    with caplog.at_level("WARNING", logger="steer.data.loaders"):
        problems = load_problems(write_jsonl(tmp_path / "d.jsonl", rows), bad_rows=bad)
    assert [p["id"] for p in problems] == ["d/0", "d/2"]
    assert all(p["answer"] != "None" for p in problems)
    assert bad.rows == {EMPTY_PROMPT: [1, 4], MISSING_ANSWER: [3, 5]} and bad.count == 4
    assert "skipped 4 of 6 rows: empty prompt (2 rows: 1, 4; fix: check data.prompt_key" in caplog.text
    assert "missing answer (2 rows: 3, 5; fix: check data.answer_key" in caplog.text


def test_a_source_with_no_usable_row_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no usable rows left: .*skipped 2 of 2 rows: missing answer \(2 rows: 0, 1"):
        load_problems(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": None}] * 2))


def test_overlong_prompts_are_dropped_with_row_numbers():
    problems = [{"id": str(i), "prompt": "x" * n, "answer": "1", "task": "t"} for i, n in enumerate([5, 31, 10, 30])]
    kept, bad = drop_overlong(problems, len, context=40, max_new_tokens=10)
    assert [p["id"] for p in kept] == ["0", "2", "3"] and bad.rows == {OVERLONG_PROMPT: [1]}  # 30 + 10 fits
    assert drop_overlong(problems, len, context=None, max_new_tokens=10)[0] == problems


def test_an_unknown_rollout_backend_fails_at_config_validation():
    with pytest.raises(ConfigError, match=r"rollout.backend: 'vlm' is not one of: 'hf', 'vllm'"):
        load_config("tiny", {"rollout": {"backend": "vlm"}})
