"""The training flow for real: Prefect (a throwaway API), MLflow (SQLite), Parquet, the embedded tiny policy's recipe
at test size (tests/policies.py)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from policies import SMALL_POLICY
from prefect.client.orchestration import get_client
from transformers import AutoModelForCausalLM

from flows.train import train
from steer.checkpoint import latest_checkpoint
from steer.config import load_config
from steer.rollout_store import ROLLOUT_SCHEMA, finished_steps, read_rollouts
from steer.verifiers import VERIFIERS
from steer.verifiers.math import MathScorer

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "steps": 3,
    "checkpoint_every": 1,
    "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 8},
    "optim": {"mini_batch_prompts": 2, "micro_batch_size": 8, "lr": 1e-4},
    "eval": {"every": 2, "max_new_tokens": 8},
    "data": {"heldout_size": 16, "train_size": 200},
    # built by the small_policy fixture; the session's torch threads (tests/conftest.py), not the preset's 2
    "model": {"name_or_path": SMALL_POLICY, "num_threads": int(os.environ["STEER_TEST_TORCH_THREADS"])},
    # logging the model takes seconds per run: the tests that look at it turn it on (finished_run, the service tier)
    "tracking": {"log_model": False, "system_metrics": False},
}


def small_config(out: Path, **extra):
    return load_config("tiny", {**SMALL, "output_dir": str(out), **extra})


def metric_history(run_dir: Path, key: str) -> dict[int, float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def finished_run(prefect_harness, small_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "run"
    summary = train(small_config(out, tracking={"system_metrics_interval_s": 1}))  # logs the model, system metrics
    return out, summary


def test_rollouts_are_in_parquet_with_the_documented_schema(finished_run):
    out, _ = finished_run
    table = read_rollouts(out / "rollouts")
    assert table.schema.equals(ROLLOUT_SCHEMA, check_metadata=False)
    assert table.num_rows == 3 * 4 * 4  # steps x B x G
    assert finished_steps(out / "rollouts") == [0, 1, 2]
    rows = table.to_pylist()
    assert all(len(r["token_ids"]) == r["length"] == len(r["steer_weight"]) for r in rows)
    assert all(0.7 - 1e-6 <= w <= 1.0 for r in rows for w in r["steer_weight"])
    assert {r["reward"] for r in rows} <= {-1.0, 1.0}
    assert all((r["reward"] > 0) == r["correct"] for r in rows)


def test_mlflow_has_params_and_namespaced_metrics_per_step(finished_run):
    out, summary = finished_run
    for key in (
        "reward/mean",
        "rollout/entropy",
        "actor/clipfrac",
        "steer/weight_mean",
        "timing/update",
        "steer/quadrant/pos_high/share",
    ):
        assert sorted(metric_history(out, key)) == [0, 1, 2], key
    assert metric_history(out, "reward/verifier_errors") == {0: 0.0, 1: 0.0, 2: 0.0}  # surfaced every step
    assert metric_history(out, "eval/verifier_errors") == {0: 0.0, 2: 0.0, 3: 0.0}
    assert sorted(metric_history(out, "eval/accuracy")) == [0, 2, 3]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    params = client.get_run(summary["mlflow_run_id"]).data.params
    assert params["algorithm.token_weighting.lambda_min"] == "0.7" and params["rollout.samples_per_prompt"] == "4"
    assert summary["heldout_accuracy_before"] is not None and summary["heldout_accuracy_after"] is not None


def test_prefect_shows_progress_lines_and_artifacts_and_links_mlflow(finished_run):
    """The flow run is named <algorithm>-s<seed>-<id>; its logs hold a line per step and the summary; its artifacts
    hold the progress (100%) and a summary table naming the MLflow run; MLflow's run names this flow run back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    out, summary = finished_run
    flow_run_id = summary["prefect_flow_run_id"]
    APILogHandler().flush()  # the handler sends in batches from a background thread
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert flow_run.name == f"steer-s0-{flow_run_id[:8]}"
    for step in (1, 2, 3):
        assert any(m.startswith(f"[{flow_run.name}] step {step}/3  reward ") for m in logs), logs
    assert any(m.startswith(f"[{flow_run.name}] done: held-out accuracy") for m in logs), logs
    by_type = {a.type: a for a in artifacts}
    assert by_type["progress"].data == 100.0
    assert summary["mlflow_run_id"] in by_type["markdown"].data and "best held-out accuracy" in by_type["markdown"].data
    run = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").get_run(summary["mlflow_run_id"])
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert run.data.tags["mlflow.source.git.commit"] == head.strip()
    assert run.data.tags["steer.prefect.flow_run_id"] == flow_run_id
    assert run.data.tags["steer.algorithm"] == "steer" and run.data.tags["steer.preset"] == "tiny"


def test_mlflow_holds_the_policy_as_a_model_the_datasets_and_system_metrics(finished_run):
    """The final policy is an MLflow transformers model that loads and generates; the train and held-out sets are
    the run's dataset inputs with digests; system/* metrics were sampled; the experiment opens on runs."""
    import mlflow.transformers

    from tasks.tracking import fluent_store

    out, summary = finished_run
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert summary["model_uri"] == run.data.tags["steer.model_uri"] and summary["model_uri"].startswith("models:/")
    with fluent_store(uri):
        pipe = mlflow.transformers.load_model(summary["model_uri"])
    generated = pipe("3+4=", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert generated.startswith("3+4=") and len(generated) > len("3+4=")
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "heldout"} and all(d.digest for d in inputs.values())
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.list_artifacts(run.info.run_id, "checkpoint") == []  # checkpoints stay on disk unless asked


def test_checkpoint_reloads_with_from_pretrained(finished_run):
    out, _ = finished_run
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt.name == "step-000003"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


class FlakyMathScorer(MathScorer):
    """A real math scorer whose first call fails, as a worker pool dying once would."""

    failures_left = 1

    def score(self, responses, answers):
        if FlakyMathScorer.failures_left:
            FlakyMathScorer.failures_left -= 1
            raise ConnectionError("injected transient fault")
        return super().score(responses, answers)


def test_a_transient_scoring_fault_is_retried_and_changes_nothing(finished_run, tmp_path):
    if "flaky_math" not in VERIFIERS:
        VERIFIERS.register("flaky_math")(FlakyMathScorer)
    out, _ = finished_run
    flaky = tmp_path / "flaky"
    train(small_config(flaky, verifier="flaky_math", steps=2))
    assert FlakyMathScorer.failures_left == 0
    for key in ("reward/mean", "actor/pg_loss", "rollout/entropy"):
        assert metric_history(flaky, key) == {s: v for s, v in metric_history(out, key).items() if s < 2}, key


class OutageMathScorer(MathScorer):
    """A real math scorer that fails on every call from its ``fail_from``-th on while ``outage`` holds: a fault that
    outlasts the scoring task's retries."""

    outage, fail_from, calls = True, 2, 0

    def score(self, responses, answers):
        OutageMathScorer.calls += 1
        if OutageMathScorer.outage and OutageMathScorer.calls >= OutageMathScorer.fail_from:
            raise ConnectionError("injected outage")
        return super().score(responses, answers)


def test_exhausted_retries_end_failed_in_prefect_and_mlflow_and_the_resume_continues_the_run(finished_run, tmp_path):
    if "outage_math" not in VERIFIERS:
        VERIFIERS.register("outage_math")(OutageMathScorer)
    out, _ = finished_run
    run = tmp_path / "outage"
    state = train(small_config(run, verifier="outage_math"), return_state=True)
    assert state.is_failed() and "injected outage" in str(state.result(raise_on_failure=False))
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"
    assert finished_steps(run / "rollouts") != [0, 1, 2]

    OutageMathScorer.outage = False  # the outage is over: rerun into the same folder
    summary = train(small_config(run, verifier="outage_math"))
    assert summary["mlflow_run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1  # no second run
    assert finished_steps(run / "rollouts") == [0, 1, 2]
    for key in ("reward/mean", "actor/pg_loss", "eval/accuracy"):
        assert metric_history(run, key) == metric_history(out, key), key  # as if it had never failed


def test_after_a_resume_the_summary_reads_the_first_step_from_the_run_history(finished_run, tmp_path):
    out, summary = finished_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(latest_checkpoint(resumed / "checkpoints"))  # resume from step 2: redo step 2 only
    again = train(small_config(resumed))
    assert again["resumed_from"] == 2
    entropy = metric_history(out, "rollout/entropy")
    assert again["entropy_first"] == summary["entropy_first"] == entropy[0]
    assert again["entropy_last"] == entropy[2]


def _cli(out: Path, steps: int, env: dict) -> list[str]:
    sets = [
        "checkpoint_every=1",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=8",
        "optim.mini_batch_prompts=2",
        "optim.micro_batch_size=8",
        "optim.lr=1e-4",
        "eval.every=2",
        "eval.max_new_tokens=8",
        "data.heldout_size=16",
        "data.train_size=200",
        f"model.name_or_path={SMALL_POLICY}",
        f"model.num_threads={SMALL['model']['num_threads']}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "steer_cli.main",
        "train",
        "--preset",
        "tiny",
        "--steps",
        str(steps),
        "--output-dir",
        str(out),
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def test_resume_after_a_kill_matches_an_unbroken_run(finished_run, tmp_path):
    from prefect.settings import PREFECT_API_URL

    out, _ = finished_run
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(run, 3, env), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 300
    while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run: after the first checkpoint, before the end
    proc.wait()
    assert latest_checkpoint(run / "checkpoints") is not None, proc.stderr.read().decode()[-2000:]
    done = finished_steps(run / "rollouts")
    assert done != [0, 1, 2], "the kill came too late to test a resume"
    killed = (run / "prefect_flow_run_id").read_text().strip()
    (run / "rollouts" / ".step=000002.parquet.x1y2.tmp").write_bytes(b"partial")  # a kill mid-write leaves this
    subprocess.run(_cli(run, 3, env), cwd=ROOT, env=env, check=True, capture_output=True)
    assert finished_steps(run / "rollouts") == [0, 1, 2] and not list((run / "rollouts").glob(".*.tmp"))
    with get_client(sync_client=True) as client:  # the killed run could not report: the resume marked it
        state = client.read_flow_run(killed).state
    assert state.type.value == "CRASHED" and "killed" in state.message
    a = read_rollouts(run / "rollouts").drop(["run_id"])
    b = read_rollouts(out / "rollouts").drop(["run_id"])
    assert a.num_rows == b.num_rows == 48 and a.equals(b)  # nothing lost or duplicated, same samples
    for key in ("reward/mean", "actor/pg_loss", "eval/accuracy"):
        assert metric_history(run, key) == metric_history(out, key), key


@pytest.mark.slow
def test_smollm2_preset_trains_on_cpu(prefect_harness, tmp_path):
    """The real-model path: SmolLM2-135M-Instruct from its packaged GGUF, one step with a small batch."""
    out = tmp_path / "smol"
    cfg = load_config(
        "smollm2",
        {
            "steps": 1,
            "output_dir": str(out),
            "data": {"heldout_size": 4},
            "rollout": {"max_new_tokens": 32},
            "eval": {"max_new_tokens": 32},
        },
    )
    summary = train(cfg)
    assert read_rollouts(out / "rollouts").num_rows == 16
    assert summary["heldout_accuracy_before"] is not None
    assert AutoModelForCausalLM.from_pretrained(latest_checkpoint(out / "checkpoints")).config.model_type == "llama"


def test_a_resume_that_changes_the_algorithm_is_refused_and_a_safe_change_is_a_new_param_version(
    finished_run, tmp_path
):
    from steer.resume import ResumeConfigError

    out, _ = finished_run
    run = tmp_path / "changed"
    shutil.copytree(out, run)
    changed = load_config("tiny", {**SMALL, "output_dir": str(run), "seed": 7}, algorithm="grpo")
    with pytest.raises(ResumeConfigError, match=r"algorithm\.name: 'steer' -> 'grpo'.*seed: '0' -> '7'"):
        train(changed)
    assert finished_steps(run / "rollouts") == [0, 1, 2]  # nothing finished was lost
    summary = train(small_config(run, steps=4, eval={**SMALL["eval"], "every": 4}))  # one more step: safe
    assert summary["resumed_from"] == 3 and finished_steps(run / "rollouts") == [0, 1, 2, 3]
    params = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}").get_run(summary["mlflow_run_id"]).data.params
    assert params["steps"] == "3" and params["eval.every"] == "2"  # the first version stands
    assert (params["config_v2.steps"], params["config_v2.eval.every"], params["config_v2.from_step"]) == ("4", "4", "3")


def test_a_same_size_corrupted_checkpoint_is_detected_and_the_run_resumes_from_the_previous_one(finished_run, tmp_path):
    out, _ = finished_run
    run = tmp_path / "corrupt"
    shutil.copytree(out, run)
    weights = latest_checkpoint(run / "checkpoints") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, other weights
    weights.write_bytes(bytes(data))
    summary = train(small_config(run))
    assert summary["resumed_from"] == 2  # step-000003 was damaged: step 2 is redone from step-000002
    a, b = (read_rollouts(d / "rollouts").drop(["run_id"]) for d in (run, out))
    assert a.equals(b)
    assert metric_history(run, "eval/accuracy") == metric_history(out, "eval/accuracy")


def test_bad_data_rows_are_counted_with_row_numbers_and_a_data_error_is_not_retried(prefect_harness, tmp_path):
    import json

    from prefect.client.orchestration import get_client

    from steer.config import DataConfig
    from tasks.data import prepare_data

    good = [{"prompt": f"Calculate {a} + 1.", "answer": str(a + 1)} for a in range(10)]
    bad = [{"prompt": "", "answer": "1"}, {"prompt": "Calculate 2 + 2.", "answer": None}]
    overlong = [{"prompt": "Calculate " + "1 + " * 80 + "1.", "answer": "81"}] * 4  # > 256 tokens of tiny context
    rows = good[:4] + bad + good[4:] + overlong  # heldout: the first 4 usable rows; train: 6 good + 4 overlong
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "mixed"
    data = {"source": str(source), "heldout_size": 4}
    train(small_config(run, steps=1, data=data, eval={**SMALL["eval"], "every": 0}))
    report = json.loads((run / "data" / "bad_rows.json").read_text())
    assert report["skipped"] == 2 and report["rows"] == {"empty prompt": [4], "missing answer": [5]}
    prompts = read_rollouts(run / "rollouts", columns=["prompt", "answer"]).to_pydict()
    assert "None" not in prompts["answer"] and all("1 + 1 + 1" not in p for p in prompts["prompt"])  # none trained on

    source.write_text(json.dumps({"prompt": "x", "answer": None}) + "\n")
    state = prepare_data(DataConfig(source=str(source)), str(tmp_path / "refused"), return_state=True)
    assert state.is_failed() and "no usable rows left" in str(state.result(raise_on_failure=False))
    with get_client(sync_client=True) as client:  # task-run states reach the API as events, a moment later
        deadline = time.monotonic() + 60
        task_run = client.read_task_run(state.state_details.task_run_id)
        while not (task_run.state and task_run.state.is_final()) and time.monotonic() < deadline:
            time.sleep(0.5)
            task_run = client.read_task_run(state.state_details.task_run_id)
        names = [st.name for st in client.read_task_run_states(task_run.id)]
    assert task_run.state.is_failed(), names
    assert not {"AwaitingRetry", "Retrying"} & set(names), names  # a data error: no retries


def test_a_kill_between_the_final_checkpoint_and_its_artifact_is_completed_on_rerun(
    prefect_harness, small_policy, tmp_path
):
    from urllib.parse import urlparse

    run = tmp_path / "artifact"
    settings = dict(steps=1, eval={**SMALL["eval"], "every": 0}, tracking={"log_checkpoints": True})
    train(small_config(run, **settings))
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    run_id = (run / "mlflow_run_id").read_text().strip()
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/step-000001"]
    # what a kill right after the final checkpoint's rename leaves: the checkpoint, no upload, no logged model, a
    # RUNNING run
    shutil.rmtree(Path(urlparse(client.get_run(run_id).info.artifact_uri).path) / "checkpoint")
    (run / "final_checkpoint_logged").unlink()
    client.delete_tag(run_id, "steer.model_uri")
    client.set_terminated(run_id, status="RUNNING")
    summary = train(small_config(run, **settings))
    assert summary["resumed_from"] == 1 and summary["mlflow_run_id"] == run_id
    assert summary["model_uri"] == client.get_run(run_id).data.tags["steer.model_uri"]  # logged again
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/step-000001"]
    files = {a.path for a in client.list_artifacts(run_id, "checkpoint/step-000001")}
    assert "checkpoint/step-000001/model.safetensors" in files and client.get_run(run_id).info.status == "FINISHED"


def test_sigterm_stops_every_child_and_both_stores_say_how_the_run_ended(small_policy, tmp_path):
    """``kill PID`` on ``steer train`` with its own ephemeral Prefect API: no process outlives it (the API server,
    the verifier's workers), Prefect's database says CRASHED, MLflow says KILLED."""
    import sqlite3

    run = tmp_path / "terminated"
    db = tmp_path / "prefect.db"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{db}"
    proc = subprocess.Popen(
        _cli(run, 50, env), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 400
    while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGTERM)  # the process only, as `kill PID` does: not its group
    try:
        rc = proc.wait(timeout=120)
        assert rc == 128 + signal.SIGTERM, proc.stderr.read().decode()[-3000:]
        time.sleep(1)
        left = subprocess.run(["ps", "-o", "pid=,cmd=", "-s", str(proc.pid)], capture_output=True, text=True).stdout
        assert left.strip() == "", left
    finally:
        if _session_alive(proc.pid):  # a failed check must not leave the processes behind
            os.killpg(proc.pid, signal.SIGKILL)
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    mlflow_run = client.get_run((run / "mlflow_run_id").read_text().strip())
    assert mlflow_run.info.status == "KILLED" and "TerminationSignal" in mlflow_run.data.tags["steer.error"]
    flow_run_id = (run / "prefect_flow_run_id").read_text().strip()
    with sqlite3.connect(db) as con:
        (state,) = con.execute("select state_type from flow_run where id = ?", (flow_run_id,)).fetchone()
    assert state == "CRASHED"


def _session_alive(sid: int) -> bool:
    return bool(subprocess.run(["ps", "-o", "pid=", "-s", str(sid)], capture_output=True, text=True).stdout.strip())
