"""The evaluation flow for real on CPU: the test-size embedded policy (tests/policies.py) on offline benchmarks,
results in Parquet and MLflow."""

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from flows.evaluate import evaluate
from steer_cli.main import main

pytestmark = pytest.mark.flow


def test_evaluation_flow_writes_generations_and_metrics(prefect_harness, small_policy, tmp_path):
    out = tmp_path / "eval"
    results = evaluate(
        model=small_policy,
        benchmarks=["reasoning_gym_heldout", "champ"],
        k=2,
        limit=6,
        max_new_tokens=10,
        output_dir=str(out),
    )
    rg = results["reasoning_gym_heldout"]
    assert rg["eval/reasoning_gym_heldout/num_problems"] == 6
    assert 0.0 <= rg["eval/reasoning_gym_heldout/pass_at_1"] <= rg["eval/reasoning_gym_heldout/maj_at_2"] + 1
    # pass@1 is avg@k for k >= 1 samples, by the unbiased estimator's definition
    assert rg["eval/reasoning_gym_heldout/pass_at_1"] == pytest.approx(rg["eval/reasoning_gym_heldout/avg_at_2"])
    gens = pq.read_table(out / "generations-reasoning_gym_heldout.parquet").to_pylist()
    assert len(gens) == 12 and {g["sample_index"] for g in gens} == {0, 1}
    assert sum(g["correct"] for g in gens) / 12 == pytest.approx(rg["eval/reasoning_gym_heldout/avg_at_2"])
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()
    logged = client.get_run(run_id).data.metrics
    assert logged["eval/champ/avg_at_2"] == results["champ"]["eval/champ/avg_at_2"]
    assert (out / "results.md").read_text().count("| champ |") >= 3


def test_unknown_benchmark_fails_before_loading_anything(prefect_harness, tmp_path, capsys):
    assert main(["eval", "--benchmark", "aime2024", "--output-dir", str(tmp_path)]) == 2
    assert "valid names" in capsys.readouterr().err


def test_a_failed_evaluation_ends_failed_in_mlflow_and_in_prefect(prefect_harness, tmp_path):
    out = tmp_path / "eval"
    # a template over a field the benchmark does not have fails inside the evaluation, after the MLflow run started
    state = evaluate(
        model="tiny",
        benchmarks=["reasoning_gym_heldout"],
        limit=2,
        max_new_tokens=4,
        template="{no_such_field}",
        output_dir=str(out),
        return_state=True,
    )
    assert state.is_failed()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_rerun_into_the_same_folder_is_a_new_run_that_keeps_its_metrics(prefect_harness, small_policy, tmp_path):
    out = tmp_path / "eval"
    kwargs = dict(model=small_policy, benchmarks=["reasoning_gym_heldout"], k=1, max_new_tokens=6, output_dir=str(out))
    evaluate(limit=2, **kwargs)
    first = (out / "mlflow_run_id").read_text().strip()
    again = evaluate(limit=4, **kwargs)["reasoning_gym_heldout"]
    second = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    assert second != first and client.get_run(first).data.metrics["eval/reasoning_gym_heldout/num_problems"] == 2
    assert client.get_run(second).data.metrics == again  # the new metrics, not the old run's


def test_a_failure_before_the_model_loads_leaves_a_failed_run_naming_it(prefect_harness, tmp_path):
    out = tmp_path / "eval"
    state = evaluate(
        model=str(tmp_path / "no-such-model"), benchmarks=["champ"], output_dir=str(out), return_state=True
    )
    assert state.is_failed()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run((out / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED" and "no such folder" in run.data.tags["steer.error"]
