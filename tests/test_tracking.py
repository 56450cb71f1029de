"""Trackers: naming rules, and MlflowTracker against a real local SQLite MLflow store (params, metric history,
artifacts, resume, retries)."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE  # noqa: E402

from steer.tracking import NullTracker, Tracker, check_metric_names, flatten_params  # noqa: E402
from tasks.tracking import RUN_ID_FILE, MlflowTracker, with_retries  # noqa: E402

pytestmark = pytest.mark.flow

CONFIG = {"seed": 3, "optim": {"lr": 1e-6, "betas": [0.9, 0.999]}, "steer": {"scope": "mini", "nested": {"k": None}}}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables made once (migrations take seconds); tests copy it."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def output_dir(tmp_path, empty_store, monkeypatch) -> Path:
    """An output folder whose default store (``<dir>/mlflow.db``) already has its tables; no MLFLOW_TRACKING_URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return tmp_path


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_names_and_flattening():
    check_metric_names(["actor/clip_frac", "steer/omega.abs-max", "timing/step"])
    with pytest.raises(ValueError, match=r"'actor/Clip\(frac\)' -> 'actor/clip_frac'.*'a@b' -> 'a_b'"):
        check_metric_names(["actor/Clip(frac)", "ok", "a@b"])
    assert flatten_params(CONFIG) == {
        "seed": "3",
        "optim.lr": "1e-06",
        "optim.betas": "[0.9, 0.999]",
        "steer.scope": "mini",
        "steer.nested.k": "None",
    }
    with pytest.raises(ValueError, match="'optim.a.b' must be a non-empty string without '.'"):
        flatten_params({"optim": {"a.b": 1}})


def test_null_tracker_is_a_tracker_and_checks_names():
    tracker = NullTracker()
    assert isinstance(tracker, Tracker) and tracker.run_id == "untracked"
    tracker.log_params(CONFIG)
    tracker.log_metrics({"reward/mean": torch.tensor(0.5)}, step=0)
    with pytest.raises(ValueError, match="rename"):
        tracker.log_metrics({"Reward Mean": 0.5}, step=0)
    tracker.close()


def test_default_store_params_metrics_artifacts(output_dir):
    tracker = MlflowTracker(output_dir, experiment="exp-a", run_name="first")
    assert isinstance(tracker, Tracker) and not tracker.resumed
    assert tracker.tracking_uri == f"sqlite:///{output_dir.resolve()}/mlflow.db"
    assert (output_dir / RUN_ID_FILE).read_text().strip() == tracker.run_id

    tracker.log_params({**CONFIG, "long": "x" * 7000})
    for step in range(3):
        tracker.log_metrics({"reward/mean": 0.1 * step, "actor/entropy": torch.tensor(2.0 - step)}, step=step)
    (output_dir / "note.txt").write_text("hello")
    ckpt = output_dir / "step-000002"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "sub" / "w.bin").write_bytes(b"\x00\x01")
    tracker.log_artifact(output_dir / "note.txt")
    tracker.log_artifact(ckpt, artifact_path="checkpoints")
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(output_dir / "missing.txt")
    tracker.set_tags({"steer.algorithm": "steer"})
    tracker.close()
    tracker.close()  # idempotent

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "exp-a"
    params = run.data.params
    assert {k: params[k] for k in flatten_params(CONFIG)} == flatten_params(CONFIG)
    assert params["long"] == "x" * 6000
    assert run.data.tags["steer.algorithm"] == "steer"
    assert run.data.tags["steer.output_dir"] == str(output_dir.resolve())
    steps, values = zip(*history(client, tracker.run_id, "reward/mean"))
    assert steps == (0, 1, 2) and values == pytest.approx((0.0, 0.1, 0.2))
    assert history(client, tracker.run_id, "actor/entropy") == [(0, 2.0), (1, 1.0), (2, 0.0)]

    assert run.info.artifact_uri.startswith((output_dir / "mlartifacts").resolve().as_uri())
    dest = Path(client.download_artifacts(tracker.run_id, "", str(output_dir / "download")))
    assert (dest / "note.txt").read_text() == "hello"
    assert (dest / "checkpoints" / "step-000002" / "config.json").read_text() == "{}"
    assert (dest / "checkpoints" / "step-000002" / "sub" / "w.bin").read_bytes() == b"\x00\x01"


def test_resume_reopens_the_run(output_dir):
    first = MlflowTracker(output_dir)
    first.log_params(CONFIG)
    for step in range(3):
        first.log_metrics({"reward/mean": float(step)}, step=step)
    # the process dies here: no close(); a checkpoint from step 0 means steps 1, 2 are redone
    second = MlflowTracker(output_dir)
    assert second.resumed and second.run_id == first.run_id
    second.log_params(CONFIG)  # same values: accepted
    with pytest.raises(ValueError, match=r"optim\.lr: logged '1e-06', now '0.001'.*new output dir"):
        second.log_params({**CONFIG, "optim": {"lr": 1e-3, "betas": [0.9, 0.999]}})
    for step in range(1, 5):
        second.log_metrics({"reward/mean": 10.0 + step, "reward/new": 1.0}, step=step)
    second.close("FAILED")
    third = MlflowTracker(output_dir)  # a finished run is reopened as running
    assert third.client.get_run(third.run_id).info.status == "RUNNING"
    third.close()

    client = MlflowClient(tracking_uri=first.tracking_uri)
    assert history(client, first.run_id, "reward/mean") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
    assert history(client, first.run_id, "reward/new") == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)]
    assert len(client.search_runs([first.experiment_id])) == 1


def test_bad_metric_name_logs_nothing(output_dir):
    tracker = MlflowTracker(output_dir)
    with pytest.raises(ValueError, match="'steer/omega@max' -> 'steer/omega_max'"):
        tracker.log_metrics({"steer/ok": 1.0, "steer/omega@max": 2.0}, step=0)
    assert tracker.client.get_run(tracker.run_id).data.metrics == {}


def test_environment_uri_wins_and_unknown_run_is_explained(tmp_path, empty_store, monkeypatch):
    shared = tmp_path / "shared.db"
    shutil.copy(empty_store, shared)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shared}")
    tracker = MlflowTracker(tmp_path / "out")
    tracker.log_metrics({"perf/tokens_per_s": 5.0}, step=0)
    assert not (tmp_path / "out" / "mlflow.db").exists()
    assert MlflowClient(tracking_uri=f"sqlite:///{shared}").get_run(tracker.run_id).data.metrics == {
        "perf/tokens_per_s": 5.0
    }
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / RUN_ID_FILE).write_text("0123456789abcdef0123456789abcdef")
    with pytest.raises(RuntimeError, match="does not have. Point MLFLOW_TRACKING_URI"):
        MlflowTracker(tmp_path / "other")


def test_retries_transient_errors_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        return "ok"

    assert with_retries(flaky, attempts=4, base_delay=0.0) == "ok" and len(calls) == 3

    calls.clear()
    with pytest.raises(MlflowException, match="locked"):
        with_retries(flaky, attempts=2, base_delay=0.0)
    assert len(calls) == 2

    def invalid():
        calls.append(1)
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

    calls.clear()
    with pytest.raises(MlflowException, match="bad value"):
        with_retries(invalid, attempts=4, base_delay=0.0)
    assert len(calls) == 1


class _StatusRecorder(NullTracker):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[str] = []

    def close(self, status: str = "FINISHED") -> None:
        self.statuses.append(status)


@pytest.mark.parametrize(
    ("error", "status"), [(None, "FINISHED"), (RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")]
)
def test_closing_run_records_how_the_run_ended(error, status):
    from steer.tracking import closing_run

    rec = _StatusRecorder()
    try:
        with closing_run(rec) as t:
            assert t is rec
            if error is not None:
                raise error()
    except BaseException as e:  # noqa: BLE001  (the block's own error, re-raised by closing_run)
        assert isinstance(e, error)
    assert rec.statuses == [status]


def test_log_model_registers_a_version_that_loads_as_a_hugging_face_folder(output_dir, small_policy):
    """``tracking.registered_model_name``: the logged policy becomes version 1 of a registered model, and
    ``models:/<name>/1`` resolves to a folder ``load_policy`` (and so ``steer eval``) reads with the same weights."""
    from steer.models.loading import load_policy
    from tasks.tracking import mlflow_policy_folder

    model, tokenizer = load_policy(small_policy)
    tracker = MlflowTracker(output_dir, experiment="models")
    uri = tracker.log_model(model, tokenizer, step=3, registered_name="steer-policy")
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    (version,) = client.search_model_versions("name='steer-policy'")
    assert int(version.version) == 1 and version.run_id == tracker.run_id
    assert tracker.logged_model_uri() == uri
    stored = client.get_logged_model(uri.removeprefix("models:/")).artifact_location  # the run's experiment's place
    assert stored.startswith((output_dir / "mlartifacts").resolve().as_uri()), stored
    folder = mlflow_policy_folder("models:/steer-policy/1", tracking_uri=tracker.tracking_uri)
    assert not Path(folder).resolve().is_relative_to(output_dir.resolve())  # a copy: the store is left as it was
    again, _ = load_policy(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    tracker.close()
