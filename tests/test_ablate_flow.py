"""``steer ablate`` for real on the test-size embedded policy (2 arms x 2 seeds x 2 steps): the parent and child
MLflow runs, the report files, the Prefect artifact, ``steer report`` re-rendering it from MLflow, and
docs/queries.md run on it; a rerun resumes, a failing arm fails the flow but not the other arms."""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from test_report import PNG_MAGIC
from test_train_flow import SMALL

from steer.rollout_store import finished_steps
from steer_cli.main import main

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ROOT / "docs" / "queries.md"
ARMS = ["grpo", "steer_0.7"]
PLOTS = ["entropy", "accuracy", "quadrants", "steer_weights", "omega_vs_entropy"]


def small_flags() -> list[str]:
    """SMALL (tests/test_train_flow.py) as --set flags, checkpoints only at the end."""
    flags = []
    for key, value in {**SMALL, "checkpoint_every": 0}.items():
        if key == "steps":
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        flags += [f"--set={key}.{k}={v}" if k else f"--set={key}={v}" for k, v in items]
    return flags


def ablate_argv(root: Path) -> list[str]:
    """Two runs at a time: the subflows share the process, the MLflow store and the cores."""
    return [
        "ablate",
        "--arms",
        ",".join(ARMS),
        "--seeds",
        "0,1",
        "--steps",
        "2",
        "--output-dir",
        str(root),
        "--concurrency",
        "2",
        *small_flags(),
    ]


@pytest.fixture(scope="module")
def ablation(prefect_harness, small_policy, tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation") / "runs"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    assert main(ablate_argv(root)) == 0
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # the flow restores it
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return root, client, (root / "mlflow_run_id").read_text().strip()


def test_parent_and_child_runs(ablation):
    root, client, parent_id = ablation
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["steer.arms"] == "grpo,steer_0.7"
    assert parent.data.params["seeds"] == "0,1"
    runs = client.search_runs([parent.info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 5 and len(children) == 4  # nothing logged outside the parent and its children
    assert {(r.data.tags["steer.arm"], r.data.tags["steer.seed"]) for r in children} == {
        (a, s) for a in ARMS for s in ("0", "1")
    }
    for run in children:
        arm, seed = run.data.tags["steer.arm"], run.data.tags["steer.seed"]
        out = root / arm / f"seed-{seed}"
        assert (out / "mlflow_run_id").read_text().strip() == run.info.run_id  # the training flow reopened it
        assert run.info.status == "FINISHED" and run.data.params["seed"] == seed
        assert run.data.params["algorithm.name"] == {"grpo": "grpo", "steer_0.7": "steer"}[arm]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0, 2]
        assert finished_steps(out / "rollouts") == [0, 1]


def test_report_files_table_and_artifacts(ablation, capsys):
    root, client, parent_id = ablation
    report = root / "report"
    for name in PLOTS:
        data = (report / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    table = pd.read_csv(report / "summary.csv")
    assert table.arm.tolist() == ARMS and table.seeds.tolist() == [2, 2]
    assert table.final_accuracy_mean.between(0, 1).all() and np.isfinite(table.final_entropy_ci95).all()
    logged = {f.path for f in client.list_artifacts(parent_id, "report")}
    assert {f"report/{n}.png" for n in PLOTS} | {"report/summary_table.json", "report/summary.csv"} <= logged

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ablation-summary"])))
    assert any(parent_id in a.data and "| steer_0.7 | 2 |" in a.data for a in found)


def test_steer_report_rerenders_from_mlflow(ablation, tmp_path, capsys):
    root, _, parent_id = ablation
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert main(["report", parent_id, "--tracking-uri", uri, "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"grpo\s+│\s+2\s+│", out) and re.search(r"steer_0\.7\s+│\s+2\s+│", out)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "summary.csv"), pd.read_csv(root / "report" / "summary.csv"))
    assert all((tmp_path / f"{n}.png").stat().st_size > 10_000 for n in PLOTS)


def test_docs_queries_run(ablation):
    """Every block of docs/queries.md on the ablation; pandas and DuckDB agree on the quadrant table."""
    root, client, _ = ablation
    text = QUERIES.read_text().replace("runs/ablation", str(root))
    before = os.environ.get("MLFLOW_TRACKING_URI")
    scope: dict = {}
    try:
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            exec(block, scope)
    finally:  # mlflow.set_tracking_uri also sets the environment variable: undo both
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before
    assert sorted(scope["by_arm"].index) == ARMS and len(scope["runs"]) == 4
    assert set(scope["steer_07"]["tags.steer.arm"]) == {"steer_0.7"}
    every = client.search_runs([client.get_experiment_by_name("steer-ablation").experiment_id])
    above = {r.info.run_id for r in every if r.data.metrics.get("eval/accuracy", 0.0) > 0.4}
    assert set(scope["good"].run_id) == above  # the documented filter, not the policy's accuracy, is under test
    assert sorted(scope["entropy"].index) == [0, 1] and list(scope["accuracy"].index) == [0, 2]

    by_quadrant, per_arm = (duckdb.sql(q).df() for q in re.findall(r"```sql\n(.*?)```", text, flags=re.S))
    pandas_table = scope["by_quadrant"].reset_index()
    assert (
        by_quadrant[["step", "quadrant", "tokens"]].values.tolist()
        == pandas_table[["step", "quadrant", "tokens"]].values.tolist()
    )
    np.testing.assert_allclose(by_quadrant.mean_weight, pandas_table.mean_weight, rtol=1e-5)
    assert set(by_quadrant.quadrant) <= {"pos_high", "pos_low", "neg_high", "neg_low", "zero"}
    assert per_arm.arm.unique().tolist() == ARMS and (per_arm[per_arm.arm == "grpo"].mean_weight == 1).all()
    assert (per_arm[per_arm.arm == "steer_0.7"].mean_weight < 1).all()


def test_rerun_resumes_without_new_runs(ablation):
    root, client, parent_id = ablation
    assert main(ablate_argv(root)) == 0
    assert (root / "mlflow_run_id").read_text().strip() == parent_id
    experiment = client.get_run(parent_id).info.experiment_id
    assert len(client.search_runs([experiment])) == 5


class BrokenScorer:
    """A verifier that always fails, as a broken environment would: the arm using it fails at its first scoring."""

    num_errors = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def score(self, responses, answers):
        raise ValueError("injected: this verifier always fails")


def test_a_failing_arm_fails_the_flow_but_not_the_other_arms(prefect_harness, small_policy, tmp_path):
    from flows.ablate import ablate
    from steer.ablation import AblationConfig, ArmSpec
    from steer.verifiers import VERIFIERS

    if "broken_math" not in VERIFIERS:
        VERIFIERS.register("broken_math")(BrokenScorer)
    arms = [
        ArmSpec(name="grpo", algorithm="grpo"),
        ArmSpec(name="broken", algorithm="grpo", overrides={"verifier": "broken_math"}),
    ]
    small = {k: v for k, v in SMALL.items() if k != "steps"}
    config = AblationConfig(arms=arms, seeds=[0], steps=1, overrides=small, output_root=str(tmp_path))
    with pytest.raises(RuntimeError, match="1 of 2 runs failed: broken/seed-0"):
        ablate(config)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run((tmp_path / "mlflow_run_id").read_text().strip())
    assert parent.info.status == "FAILED"
    status = {
        arm: client.get_run((tmp_path / arm / "seed-0" / "mlflow_run_id").read_text().strip()).info.status
        for arm in ("grpo", "broken")
    }
    assert status == {"grpo": "FINISHED", "broken": "FAILED"}
    assert pd.read_csv(tmp_path / "report" / "summary.csv").arm.tolist() == ["grpo"]  # failed runs are left out
