"""Services for real, on loopback: an MLflow server read over HTTP; and scripts/service.sh (a Prefect server, a
process worker, an MLflow UI) with deployments/prefect.yaml deployed and a training run triggered through the Prefect
client. Every process is started on a free port with its own state in a temporary folder and stopped afterwards
(process groups, SIGKILL as a last resort)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from test_report import PNG_MAGIC, make_ablation_store, synthetic_metrics
from test_train_flow import SMALL

from steer.config import load_config
from steer.rollout_store import ROLLOUT_SCHEMA, finished_steps, read_rollouts
from tasks.comparison import publish_report, rebuild_report

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts" / "service.sh"
DEPLOYMENTS = ROOT / "deployments" / "prefect.yaml"
DEPLOYMENT_NAMES = {
    "train",
    "evaluate",
    "ablation",
    "lambda-min-nightly",
    "estimator-study",
    "study-collapse",
    "study-sensitivity",
    "study-baselines",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing answered at {url} within {timeout} s")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's parent may not reap it at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------------ MLflow over HTTP
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on a free loopback port over a store holding a (synthetic-metric) ablation."""
    root = tmp_path_factory.mktemp("mlflow-http")
    uri, parent = make_ablation_store(root / "store", synthetic_metrics())
    port = free_port()
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--artifacts-destination",
        str(root / "served"),
    ]
    log = open(root / "mlflow.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        yield f"http://127.0.0.1:{port}", parent
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
        log.close()


def test_mlflow_server_serves_runs_metrics_and_report_over_http(mlflow_server, tmp_path, capsys):
    url, parent = mlflow_server
    client = MlflowClient(tracking_uri=url)
    run = client.get_run(parent)
    assert run.data.tags["steer.arms"] == "grpo,steer_0.7"
    report = rebuild_report(client, parent, tmp_path / "report")  # children and metric histories over HTTP
    assert report.table.arm.tolist() == ["grpo", "steer_0.7"] and report.table.seeds.tolist() == [2, 2]
    child = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")[0]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "rollout/entropy")] == [0, 1, 2, 3]

    urls = publish_report(client, parent, report)  # an http tracking URI: links go through the server
    assert urls["entropy"].startswith(f"{url}/get-artifact?path=report/entropy.png&run_uuid={parent}")
    with urllib.request.urlopen(urls["entropy"], timeout=30) as response:
        assert response.read().startswith(PNG_MAGIC)

    from steer_cli.main import main

    assert main(["report", parent, "--tracking-uri", url, "--output-dir", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "grpo" in out and "steer_0.7" in out and (tmp_path / "cli" / "accuracy.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------- deployments
@pytest.mark.unit
def test_deployments_yaml_is_typed_and_the_train_form_starts_from_the_tiny_preset():
    spec = yaml.safe_load(DEPLOYMENTS.read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == DEPLOYMENT_NAMES
    assert {d["entrypoint"] for d in by_name.values()} == {
        "flows/train.py:train_preset",
        "flows/evaluate.py:evaluate",
        "flows/ablate.py:ablate",
        "flows/estimator_study.py:estimator_study",
    }
    form = by_name["train"]["parameters"]  # names the preset and the algorithm, copies none of their fields
    assert form == {"preset": "tiny", "algorithm": "steer", "overrides": {"output_dir": "runs/ui-train"}}
    assert load_config(form["preset"], form["overrides"], algorithm=form["algorithm"]).algorithm.name == "steer"
    nightly = by_name["lambda-min-nightly"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": False}]
    from steer.ablation import AblationConfig

    arms = AblationConfig(**nightly["parameters"]["config"]).arms
    lams = [a.overrides.get("algorithm.token_weighting.lambda_min") for a in arms]
    assert lams == [None, 0.6, 0.7, 0.8]
    from steer.studies.config import EstimatorStudyConfig

    study = EstimatorStudyConfig(**by_name["estimator-study"]["parameters"]["config"])
    assert study.optimizers == EstimatorStudyConfig().optimizers  # the form shows the calibrated defaults
    from steer.ablation import STUDIES

    for name, st in STUDIES.items():  # the study deployments' forms are the studies of `steer study <name>`
        form = AblationConfig(**by_name[f"study-{name}"]["parameters"]["config"])
        assert form.arms == list(st.arms) and form.seeds == list(st.seeds) and form.preset == st.preset, name
    step = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step == {"directory": "{{ $STEER_ROOT }}"}


@pytest.mark.unit
def test_the_run_parameters_in_docs_service_md_are_valid():
    from steer.ablation import AblationConfig

    text = (ROOT / "docs" / "service.md").read_text()
    params = [json.loads(p) for p in re.findall(r"--params '(\{.*?\})'", text)]
    assert len(params) == 2
    assert load_config(params[0]["preset"], params[0]["overrides"], algorithm=params[0]["algorithm"]).steps == 10
    assert [j.arm for j in AblationConfig(**params[1]["config"]).jobs(Path("x"))] == [
        "grpo",
        "grpo",
        "steer_0.7",
        "steer_0.7",
    ]


@pytest.fixture(scope="module")
def service(small_policy, tmp_path_factory):
    """scripts/service.sh start (server, worker, MLflow UI) on free ports with state in a temporary folder; stop."""
    d = tmp_path_factory.mktemp("service")
    env = {
        **os.environ,
        "STEER_SERVICE_DIR": str(d / "svc"),
        "PREFECT_HOME": str(d / "prefect-home"),
        "PREFECT_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "STEER_MLFLOW_STORE": f"sqlite:///{d / 'mlflow.db'}",
        "STEER_MLFLOW_ARTIFACTS": str(d / "served"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "STEER_STOP_TIMEOUT": "5",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "VENV": str(VENV_BIN.parent),
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, timeout=300, capture_output=True)
        yield env, d
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, timeout=120, capture_output=True)
        for pidfile in (d / "svc").glob("*.pid"):  # stop failed: end the groups by their recorded ids
            kill_group(int(pidfile.read_text()))


def _ray_left(service_dir: Path, wait_s: float = 10.0) -> list[str]:
    """Ray's processes (GCS, raylet, workers) started by this service's flow runs: they inherit the worker's
    ``STEER_SERVICE_DIR``, which tells them from another test's Ray. Waits ``wait_s`` for the raylet's children."""
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in psutil.process_iter():
            try:
                cmd = " ".join(p.cmdline())
                if "ray" in cmd and any(k in cmd for k in ("gcs_server", "raylet", "default_worker", "ray::")):
                    if p.environ().get("STEER_SERVICE_DIR") == str(service_dir):
                        left.append(f"{p.pid} {cmd[:80]}")
            except psutil.Error:
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _terminal(client, flow_run_id, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {flow_run_id} did not finish within {timeout} s")


def _running_interval(client, flow_run_id) -> tuple[float, float]:
    """When the flow run entered Running and when it left it (its final state), as timestamps."""
    states = sorted(client.read_flow_run_states(flow_run_id), key=lambda st: st.timestamp)
    start = next(st.timestamp for st in states if st.type.value == "RUNNING")
    end = next(st.timestamp for st in reversed(states) if st.is_final())
    return start.timestamp(), end.timestamp()


def test_deploy_and_run_training_through_a_server_and_process_worker(service):
    """Two trainings submitted together run one after the other (the deployment's concurrency limit and the training
    slot), the second on two Ray trainer ranks (the same Parquet columns, one MLflow run, no Ray process left); each
    is followed in Prefect (per-step log lines, a summary artifact linking MLflow) and in MLflow through
    its server (tags naming the commit and the flow run, the logged model, which loads and generates, the dataset
    inputs, system metrics); a typo in a drop-down field is refused by the Prefect API when the run is created."""
    env, d = service
    status = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=30).stdout
    assert [line.split(":")[1].split(",")[0].strip() for line in status.splitlines()] == ["running"] * 3, status
    deploy = subprocess.run([str(SCRIPT), "deploy"], env=env, capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    outs = [d / "deployed-run", d / "deployed-run-2"]
    tracking = {"log_model": True, "system_metrics_interval_s": 1}

    def params(out: Path, algorithm: str = "grpo", **extra) -> dict:
        over = {**SMALL, "steps": 2, "output_dir": str(out), "tracking": tracking, **extra}
        return {"preset": "tiny", "algorithm": algorithm, "overrides": over}

    # the second run trains on two FSDP2 ranks placed by a Ray the flow run starts and stops (8 responses a
    # mini-batch = 2 ranks x micro-batches of 4)
    on_ray = {"trainer": {"backend": "ray", "world_size": 2}, "optim": {**SMALL["optim"], "micro_batch_size": 4}}

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{env['PREFECT_PORT']}/api"}):
        with pytest.raises(PrefectHTTPStatusError, match="422|409|Validation|grpoo"):
            run_deployment("steer-train-preset/train", parameters=params(d / "typo", "grpoo"), timeout=0)
        submitted = [
            run_deployment("steer-train-preset/train", parameters=p, timeout=0)
            for p in (params(outs[0]), params(outs[1], **on_ray))
        ]
        with get_client(sync_client=True) as client:
            runs = [_terminal(client, r.id, timeout=600) for r in submitted]
            intervals = [_running_interval(client, r.id) for r in runs]
            nightly = client.read_deployment_by_name("steer-ablate/lambda-min-nightly")
            names = {dep.name for dep in client.read_deployments()}
            logs = [log.message for log in client.read_logs()]
            artifacts = client.read_artifacts()  # the training subflows' (train_preset runs train inside)
    worker_log = (d / "svc" / "worker.log").read_text()[-4000:]
    assert all(r.state.is_completed() for r in runs), ([r.state for r in runs], worker_log)
    (a0, a1), (b0, b1) = sorted(intervals)
    assert a1 <= b0 + 1.0, intervals  # one after the other, not side by side
    assert names == DEPLOYMENT_NAMES
    assert [s.active for s in nightly.schedules] == [False] and nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert nightly.parameter_openapi_schema["properties"]["config"]  # a typed form
    for out in outs:
        assert finished_steps(out / "rollouts") == [0, 1]
    local, ray = (read_rollouts(out / "rollouts") for out in outs)
    assert ray.schema.equals(local.schema) and ray.schema.equals(ROLLOUT_SCHEMA, check_metadata=False)
    assert not _ray_left(d / "svc"), "a Ray process outlived the deployed run"

    # Prefect: a line per step of the training subflow, and the summary artifact with the MLflow link
    mlflow_url = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    assert sum(" step 2/2  reward " in m for m in logs) == 2, logs[-40:]
    summaries = [a for a in artifacts if a.type == "markdown" and a.key and a.key.endswith("-summary")]
    client = MlflowClient(tracking_uri=mlflow_url)
    run = client.get_run((outs[0] / "mlflow_run_id").read_text().strip())
    assert any(
        f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in a.data for a in summaries
    )

    # MLflow, through the server the script started (the worker logs there, not to the database file)
    assert run.info.status == "FINISHED" and run.data.params["steps"] == "2"
    ray_run = client.get_run((outs[1] / "mlflow_run_id").read_text().strip())  # one MLflow run for the two ranks
    assert ray_run.info.status == "FINISHED" and ray_run.data.params["trainer.backend"] == "ray"
    assert "perf/tokens_per_s_per_rank" in ray_run.data.metrics
    assert run.data.params["algorithm.name"] == "grpo" and run.data.params["algorithm.clip.eps_high"] == "0.2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")) == [0, 2]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == head.strip() and tags["steer.algorithm"] == "grpo"
    assert tags["steer.prefect.flow_run_url"].endswith(f"/runs/flow-run/{tags['steer.prefect.flow_run_id']}")
    assert {d.tags[0].value for d in run.inputs.dataset_inputs} == {"train", "heldout"}
    assert any(k.startswith("system/") for k in run.data.metrics)
    import mlflow.transformers

    from tasks.tracking import fluent_store, mlflow_policy_folder

    with fluent_store(mlflow_url):  # downloaded through the server's artifact proxy
        pipe = mlflow.transformers.load_model(tags["steer.model_uri"], dst_path=str(d))
    assert Path(mlflow_policy_folder(tags["steer.model_uri"], tracking_uri=mlflow_url), "config.json").exists()
    generated = pipe("3+4=", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert generated.startswith("3+4=") and len(generated) > len("3+4=")


def test_stop_ends_every_process_it_started(service):
    env, d = service
    pids = [int(p.read_text()) for p in (d / "svc").glob("*.pid")]
    assert len(pids) == 3
    subprocess.run([str(SCRIPT), "stop"], env=env, check=True, timeout=120, capture_output=True)
    assert not [pid for pid in pids if alive(pid)]
    assert not list((d / "svc").glob("*.pid"))
    for port in (env["PREFECT_PORT"], env["MLFLOW_PORT"]):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0


@pytest.mark.unit
def test_the_failure_automation_validates_and_watches_failed_and_crashed_steer_runs():
    """deployments/automations.yaml is what `prefect automation create --from-file` accepts once the placeholder
    block id is replaced (docs/service.md)."""
    from prefect.events.schemas.automations import AutomationCore

    spec = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())
    (automation,) = [AutomationCore.model_validate(a) for a in spec["automations"]]
    assert set(automation.trigger.expect) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert automation.trigger.match_related.root == {
        "prefect.resource.role": "tag",
        "prefect.resource.id": "prefect.tag.steer",
    }
    assert [a.type for a in automation.actions] == ["send-notification"]


@pytest.mark.unit
def test_every_training_deployment_queues_behind_one_running_training():
    spec = yaml.safe_load(DEPLOYMENTS.read_text())
    limited = {d["name"] for d in spec["deployments"] if d.get("concurrency_limit")}
    assert limited == DEPLOYMENT_NAMES - {"evaluate"}
    assert {str(d["concurrency_limit"]) for d in spec["deployments"] if d.get("concurrency_limit")} == {
        str({"limit": 1, "collision_strategy": "ENQUEUE"})
    }
