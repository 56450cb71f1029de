"""Benchmark registry and loaders: offline packages, generated held-out split, local files, the offline hub error."""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steer.benchmarks import BENCHMARKS, BenchmarkUnavailable, load_benchmark
from steer.benchmarks.loaders import champ_answer, decode_lcb_tests
from steer.benchmarks.reasoning_gym import make_reasoning_gym_problems
from steer.data.embedded import ArithmeticTask, heldout_problems, train_problems
from steer.verifiers.code import verify_code
from steer.verifiers.math import verify_math

pytestmark = pytest.mark.unit

NAMES = [
    "aime24",
    "aime25",
    "amc23",
    "champ",
    "humaneval",
    "livecodebench_v5",
    "math500",
    "minerva_math",
    "olympiadbench",
    "reasoning_gym_heldout",
]


def test_registry_and_paper_sampling_defaults():
    assert BENCHMARKS.names() == NAMES
    for name in NAMES:
        spec = BENCHMARKS.get(name)
        assert (spec.temperature, spec.top_p) == (1.0, 0.7)
        assert spec.metric_name == ("avg_at_32" if name in ("aime24", "aime25", "amc23") else "avg_at_1")
        assert spec.verifier == ("code" if name in ("humaneval", "livecodebench_v5") else "math")
    with pytest.raises(KeyError, match="valid names: aime24, aime25"):
        BENCHMARKS.get("aime2024")


def test_humaneval_from_the_package():
    problems = load_benchmark("humaneval")
    assert len(problems) == 164 and len({p["id"] for p in problems}) == 164
    first = problems[0]
    assert first["id"] == "HumanEval/0" and first["task"] == "humaneval"
    assert first["answer"]["kind"] == "humaneval" and first["answer"]["entry_point"] == "has_close_elements"
    assert first["answer"]["prompt"] in first["prompt"] and "```python" in first["prompt"]


def test_champ_from_the_package():
    problems = load_benchmark("champ")
    assert len(problems) == 270 and len({p["id"] for p in problems}) == 270
    by_id = {p["id"]: p for p in problems}
    assert by_id["P_Combinatorics_1"]["answer"] == "239"
    assert "@@" not in "".join(p["prompt"] + p["answer"] for p in problems)
    assert all(p["prompt"].endswith("within \\boxed{}.") for p in problems)
    assert verify_math("\\boxed{[-1,1]}", by_id["P_Inequality_1"]["answer"])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("@@C(10, 5)@@, or equivalently @@252@@", "252"),
        ("@@5/14@@, or approximately 35.7%", "5/14"),
        ("100 (i.e., all values)", "100"),
        ("At most 0 values (i.e., no such values)", "0"),
        ("The limit exists and is equal to @@(a+3b)/2@@", "(a+3b)/2"),
        ("Yes, and the sequence is @@1/2^3, 1/2^6, 1/2^9, ...@@", "Yes"),
        ("@@x=2, y=1@@", "x=2, y=1"),
    ],
)
def test_champ_answers_lose_their_wording(raw: str, expected: str):
    assert champ_answer(raw) == expected


def test_reasoning_gym_heldout_is_disjoint_from_training():
    problems = load_benchmark("reasoning_gym_heldout")
    spec = BENCHMARKS.get("reasoning_gym_heldout")
    assert len(problems) == spec.size == 500
    train_prompts = {p["prompt"] for p in train_problems(ArithmeticTask(), spec.exclude_train)}
    assert not train_prompts & {p["prompt"] for p in problems}
    assert len({p["prompt"] for p in problems}) == 500
    assert problems[0]["id"].startswith(f"basic_arithmetic/{ArithmeticTask().heldout_seed}/")
    assert all(p["answer"].lstrip("-").isdigit() for p in problems)


def test_generic_helper_matches_the_embedded_task():
    task = ArithmeticTask()
    train = train_problems(task, 300)
    ours = make_reasoning_gym_problems({task.name: task.generator_config()}, 40, task.heldout_seed, exclude=train)
    assert ours == heldout_problems(task, 40, exclude=train)


def test_task_mix_is_round_robin_and_seeded():
    a = make_reasoning_gym_problems(["basic_arithmetic", "chain_sum"], n=10, seed=7)
    assert [p["task"] for p in a[:4]] == ["basic_arithmetic", "chain_sum"] * 2
    assert a == make_reasoning_gym_problems(["basic_arithmetic", "chain_sum"], n=10, seed=7)
    assert a != make_reasoning_gym_problems(["basic_arithmetic", "chain_sum"], n=10, seed=8)
    assert set(a[0]) == {"id", "prompt", "answer", "task"}


ROWS = [
    {"question": "What is $1/2 + 1/4$?", "final_answer": ["$\\frac{3}{4}$"], "id": 11},
    {"question": "Solve $x^2 = 4$, $x > 0$.", "final_answer": ["2"], "id": 12},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_local_file_with_a_column_mapping(tmp_path, suffix: str):
    path = tmp_path / f"olympiad{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    problems = load_benchmark("olympiadbench", data_path=path)
    assert [p["id"] for p in problems] == ["11", "12"]
    assert problems[0]["answer"] == "\\frac{3}{4}"  # list joined, $...$ stripped
    assert problems[0]["prompt"].startswith("What is $1/2 + 1/4$?\n\nPlease reason step by step")
    assert load_benchmark("olympiadbench", data_path=path, limit=1)[0]["task"] == "olympiadbench"


def test_local_file_missing_column_names_the_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "1+1", "solution": "2"}) + "\n")
    with pytest.raises(BenchmarkUnavailable, match=r"no problem column among \['problem', 'question'\]"):
        load_benchmark("math500", data_path=path)


def test_hub_offline_error_names_the_fix():
    # tests run with HF_HUB_OFFLINE=1 (conftest), as on a machine without network
    with pytest.raises(BenchmarkUnavailable, match="--data-path FILE.jsonl"):
        load_benchmark("aime25")


def _private(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def _lcb_rows() -> list[dict]:
    stdin_tests = [{"input": "3 4\n", "output": "7\n", "testtype": "stdin"}]
    fn_tests = [{"input": "[1, 2, 3]\n2", "output": "[2, 4, 6]", "testtype": "functional"}]
    return [
        {
            "question_id": "abc100_a",
            "question_content": "Print A+B.",
            "starter_code": "",
            "contest_date": "2024-09-01T00:00:00",
            "public_test_cases": json.dumps(stdin_tests),
            "metadata": "{}",
            "private_test_cases": _private([{"input": "10 5\n", "output": "15\n", "testtype": "stdin"}]),
        },
        {
            "question_id": "lc-1",
            "question_content": "Scale a list.",
            "contest_date": "2024-10-01T00:00:00",
            "starter_code": "class Solution:\n    def scale(self, xs: list, k: int) -> list:\n        ",
            "public_test_cases": json.dumps(fn_tests),
            "private_test_cases": _private([]),
            "metadata": json.dumps({"func_name": "scale"}),
        },
        {
            "question_id": "old",
            "question_content": "Too old.",
            "starter_code": "",
            "contest_date": "2023-05-01",
            "public_test_cases": json.dumps(stdin_tests),
            "private_test_cases": "",
            "metadata": "{}",
        },
    ]


def test_livecodebench_local_file_and_date_window(tmp_path):
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _lcb_rows()))
    problems = load_benchmark("livecodebench_v5", data_path=path)
    assert [p["id"] for p in problems] == ["abc100_a", "lc-1"]  # 2023 problem outside the v5 window
    stdin_spec, fn_spec = problems[0]["answer"], problems[1]["answer"]
    assert stdin_spec["kind"] == "stdin" and len(stdin_spec["tests"]) == 2  # public + private
    assert "### Question:\nPrint A+B." in problems[0]["prompt"] and "class Solution" in problems[1]["prompt"]
    add = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    assert verify_code(add, stdin_spec) and not verify_code("print(7)", stdin_spec)
    scale = "```python\nclass Solution:\n    def scale(self, xs, k):\n        return [x * k for x in xs]\n```"
    assert verify_code(scale, fn_spec) and not verify_code(scale.replace("x * k", "x + k"), fn_spec)


def test_livecodebench_private_tests_cannot_run_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        decode_lcb_tests(base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode())
