"""``MlflowTracker``: one MLflow run per training run, resumable from the output folder, with retried calls.

- Store: ``tracking_uri`` if given, else the ``MLFLOW_TRACKING_URI`` environment variable, else a SQLite store
  ``sqlite:///<output_dir>/mlflow.db`` with artifacts under ``<output_dir>/mlartifacts`` (view it with
  ``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``). An experiment this tracker creates in any
  SQLite store keeps its artifacts in ``mlartifacts`` beside the database file (MLflow's own default would be
  ``./mlruns`` under the current directory).
- Nesting: ``parent_run_id`` makes the new run a child of another run of the same store (MLflow's
  ``mlflow.parentRunId`` tag, which its UI nests on); ``tags`` are set on the new run (an ablation tags arm and seed).
- Resume: the run id is written to ``<output_dir>/mlflow_run_id``; a tracker opened on the same folder reopens that
  run. Metrics of a ``(name, step)`` the run already holds are not logged again, so the steps redone after a resume
  (those between the last checkpoint and the interruption) leave one point per step; the first value stands.
- Params: a nested config is flattened to ``section.key`` (``steer.tracking.flatten_params``); values longer than
  MLflow's 6000 characters are truncated. Param values are immutable in MLflow: re-logging an equal value (a resumed
  run) is a no-op and a different value raises a ValueError naming the keys.
- Speed: each call is one ``log_batch`` (MLflow's limits: 1000 metrics or 100 params per batch).
- Failures: on a local store (SQLite or files: the default, which the training thread and the system-metrics thread
  share) calls are retried with exponential backoff when the error is transient (I/O, a locked SQLite database);
  through an MLflow server (an http(s) URI, as ``scripts/service.sh``'s worker uses) MLflow's own REST client retries
  and this wrapper steps aside. Invalid input fails at once.

The MlflowClient API is used directly (not ``mlflow.start_run``), so nothing depends on MLflow's global active run
and Prefect tasks in threads can share the tracker.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, SupportsFloat, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from steer.tracking import check_metric_names, flatten_params

log = logging.getLogger(__name__)

T = TypeVar("T")

RUN_ID_FILE = "mlflow_run_id"
"""File in the output folder holding the MLflow run id, read on resume."""

TRANSIENT_ERROR_CODES = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",  # MLflow's SQL store raises it for sqlalchemy's OperationalError (locked database)
        "SERVICE_UNDER_MAINTENANCE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "REQUEST_LIMIT_EXCEEDED",
        "ABORTED",
        "IO_ERROR",
        "COULD_NOT_ACQUIRE_LOCK",
    }
)
"""MLflow error codes worth retrying; any other MlflowException (invalid value, missing run) fails at once."""

EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""Tags of every experiment steer creates: the MLflow UI opens it on its runs (the model-training view), not on the
GenAI view's empty traces page."""

MODEL_NAME = "policy"
"""Name of the final policy's logged MLflow model (``runs:/<run_id>/policy`` and ``models:/<model_id>``)."""


def is_transient(error: BaseException) -> bool:
    """True for errors a retry may cure: OS/network errors and MlflowExceptions with a transient code."""
    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_ERROR_CODES
    return isinstance(error, OSError)  # includes ConnectionError, TimeoutError and requests' errors


def with_retries(fn: Callable[[], T], *, attempts: int = 4, base_delay: float = 0.5, max_delay: float = 8.0) -> T:
    """Call ``fn`` until it succeeds, at most ``attempts`` times, sleeping ``base_delay * 2**k`` (capped) after the
    k-th transient failure; a non-transient error, or the last attempt's, propagates. No jitter: one process logs."""
    for attempt in range(attempts - 1):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            delay = min(max_delay, base_delay * 2**attempt)
            log.warning(
                "MLflow call failed (%s: %s); retry %d of %d in %.1fs",
                type(e).__name__,
                e,
                attempt + 1,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    return fn()


@contextmanager
def tracking_uri_env(uri: str) -> Iterator[None]:
    """Point ``MLFLOW_TRACKING_URI`` (read by the training flow's tracker) at ``uri`` while a subflow runs, so that
    its run lands in the caller's store; the previous value is restored afterwards."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@contextmanager
def fluent_store(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.transformers.log_model``, ``mlflow.artifacts``, ``models:/`` resolution) at
    ``uri`` (and ``experiment_id``) for the block, then put back exactly what was there: the module-level tracking
    and registry URIs and the ``MLFLOW_*`` variables that ``mlflow.set_tracking_uri`` also writes, which other runs
    in this process read (an ablation's children, the evaluation flow)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    env = {k: os.environ.get(k) for k in keys}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    tracking_utils._tracking_uri, registry_utils._registry_uri = uri, uri
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def git_commit(path: str | os.PathLike | None = None) -> tuple[str | None, bool]:
    """The commit of the checkout holding ``path`` (default: this package) and whether its tree has local changes;
    (None, False) outside a git checkout or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return sha or None, bool(dirty)


def run_tags(config: Any, prefect_flow_run_id: str | None, prefect_flow_run_url: str | None) -> dict[str, str]:
    """The tags that tie a training run to its source and its orchestration: MLflow's own source tags (the UI shows
    the commit), the Prefect flow run (id and page), the preset and the algorithm."""
    sha, dirty = git_commit()
    tags = {
        "mlflow.source.name": "flows/train.py:train",
        "mlflow.source.type": "JOB",
        "steer.preset": config.preset,
        "steer.algorithm": config.algorithm.name,
        "steer.seed": config.seed,
    }
    if sha:
        tags["mlflow.source.git.commit"] = sha
        tags["steer.git.dirty"] = str(dirty).lower()
    if prefect_flow_run_id:
        tags["steer.prefect.flow_run_id"] = prefect_flow_run_id  # the latest flow run (a resume is a new one)
    if prefect_flow_run_url:
        tags["steer.prefect.flow_run_url"] = prefect_flow_run_url
    return {k: str(v) for k, v in tags.items()}


def mlflow_policy_folder(uri: str, tracking_uri: str | None = None) -> str:
    """A Hugging Face folder (model and tokenizer) for an MLflow URI. A logged transformers model (``models:/<id>``
    as in the run tag ``steer.model_uri``, or ``models:/<registered name>/<version>``) is loaded with its flavour and
    saved as one folder beside the download (a fresh folder under ``STEER_CACHE_DIR``); any other artifact folder (a
    checkpoint logged with ``tracking.log_checkpoints``) is returned as downloaded."""
    import mlflow
    import mlflow.transformers

    from steer.runtime import cache_dir

    downloads = cache_dir() / "mlflow-downloads"  # never inside the store: a local store would hand out its own folder
    downloads.mkdir(parents=True, exist_ok=True)
    dst = Path(tempfile.mkdtemp(prefix="model-", dir=downloads))
    store = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    with fluent_store(store):  # models:/ names resolve through the module's registry URI, not an argument
        local = Path(with_retries(lambda: mlflow.artifacts.download_artifacts(uri, dst_path=str(dst))))
    if not (local / "MLmodel").exists():
        return str(local)
    parts = mlflow.transformers.load_model(str(local), return_type="components")
    folder = dst / "hf-policy"
    parts["model"].save_pretrained(folder)
    parts["tokenizer"].save_pretrained(folder)
    return str(folder)


def sqlite_artifact_location(tracking_uri: str) -> str | None:
    """``file://<folder of the database>/mlartifacts`` for a ``sqlite:///`` store, None (the server's or MLflow's
    default) otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


class MlflowTracker:
    """The ``steer.tracking.Tracker`` for MLflow: one run per output folder, reopened on resume."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        experiment: str = "steer",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
        attempts: int = 4,
        base_delay: float = 0.5,
    ) -> None:
        """Open (resume) or create the run of ``output_dir``.

        Args:
            experiment: MLflow experiment name, created if missing. run_name: shown in the UI. Both apply to new
                runs only: a resumed run keeps its own.
            tracking_uri: overrides ``MLFLOW_TRACKING_URI`` and the SQLite default.
            parent_run_id, tags: the parent run and extra tags of a new run (a resumed run keeps its own).
            attempts, base_delay: retry policy of every MLflow call (see ``with_retries``).
        """
        self.output_dir = Path(output_dir).resolve()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._attempts, self._base_delay = attempts, base_delay
        default_uri = f"sqlite:///{self.output_dir / 'mlflow.db'}"
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._closed = False
        self._monitor = None  # the system-metrics thread, once started
        self._logged: set[tuple[str, int]] = set()  # (metric, step) pairs the resumed run already holds
        id_file = self.output_dir / RUN_ID_FILE
        self.resumed = id_file.exists()
        if self.resumed:
            self._run_id = id_file.read_text().strip()
            run = self._open_existing()
            self.experiment_id = run.info.experiment_id
        else:
            self.experiment_id = self._experiment_id(experiment, sqlite_artifact_location(self.tracking_uri))
            tags = {**{k: str(v) for k, v in (tags or {}).items()}, "steer.output_dir": str(self.output_dir)}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run = self._call(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags))
            self._run_id = run.info.run_id
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(self._run_id + "\n")
            os.replace(tmp, id_file)  # the id is recorded whole or not at all

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in flatten_params(params).items()}
        existing = self._call(lambda: self.client.get_run(self._run_id)).data.params
        changed = {k: (existing[k], v) for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            diff = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"MLflow run {self._run_id} already has different values for params ({diff}). A resumed run must "
                f"use the config it started with: restore those values, or start a new run in a new output dir."
            )
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = new[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._call(lambda chunk=chunk: self.client.log_batch(self._run_id, params=chunk))

    def log_metrics(self, metrics: Mapping[str, SupportsFloat], step: int) -> None:
        check_metric_names(metrics)
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if (k, step) not in self._logged]
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            chunk = batch[i : i + MAX_METRICS_PER_BATCH]
            self._call(lambda chunk=chunk: self.client.log_batch(self._run_id, metrics=chunk))

    def metric_history(self, key: str) -> dict[int, float]:
        """Step -> value of metric ``key`` over the whole run, the steps before a resume included."""
        history = self._call(lambda: self.client.get_metric_history(self._run_id, key))
        return {m.step: m.value for m in sorted(history, key=lambda m: m.step)}

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file goes to ``<artifact_path>/<name>``; a folder's contents to ``<artifact_path>/<folder name>/``."""
        path = Path(path)
        if path.is_dir():
            dest = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self._call(lambda: self.client.log_artifacts(self._run_id, str(path), artifact_path=dest))
        elif path.is_file():
            self._call(lambda: self.client.log_artifact(self._run_id, str(path), artifact_path=artifact_path))
        else:
            raise FileNotFoundError(f"no file or folder at {path} to log as an artifact")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call(lambda: self.client.log_batch(self._run_id, tags=batch))

    def log_datasets(self, paths: Mapping[str, str | os.PathLike]) -> None:
        """Record Parquet files as the run's dataset inputs (context -> path, e.g. train, heldout), each with MLflow's
        digest of its content; a resumed run that has them already logs nothing."""
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        have = {d.dataset.name for d in self._call(lambda: self.client.get_run(self._run_id)).inputs.dataset_inputs}
        inputs = []
        for context, path in paths.items():
            name = f"{context}:{Path(path).name}"
            if name in have:
                continue
            with warnings.catch_warnings():  # a local path matches two equivalent registered source types
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(pd.read_parquet(path), source=str(Path(path).resolve()), name=name)
            tags = [InputTag(key="mlflow.data.context", value=context)]
            inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags))
        if inputs:
            self._call(lambda: self.client.log_inputs(self._run_id, datasets=inputs))

    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """Sample CPU, memory, disk, network (and GPU where pynvml is installed) every ``interval_s`` seconds as
        ``system/*`` metrics of this run, in a background thread that ``close`` stops."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if self._monitor is None:
            self._monitor = SystemMetricsMonitor(
                self._run_id, sampling_interval=interval_s, resume_logging=self.resumed, tracking_uri=self.tracking_uri
            )
            self._monitor.start()

    def logged_model_uri(self) -> str | None:
        """The ``models:/`` URI of this run's logged policy, None if it has none yet."""
        return self._call(lambda: self.client.get_run(self._run_id)).data.tags.get("steer.model_uri")

    def log_model(self, model, tokenizer, *, step: int, registered_name: str | None = None) -> str:
        """Log the policy as an MLflow model in the transformers flavour (model and tokenizer: a text-generation
        pipeline for ``mlflow.transformers.load_model``), optionally registered under ``registered_name``; the
        run's tag ``steer.model_uri`` records its URI. Returns the URI."""
        import mlflow
        import mlflow.transformers
        import torch
        import transformers

        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
        # the flavour logs through the fluent API: this store, and this run's experiment (with its artifact location:
        # MLflow's default experiment would put the model under ./mlruns of the working folder)
        flavour_log = logging.getLogger("mlflow.transformers")
        level = flavour_log.level
        flavour_log.setLevel(logging.ERROR)  # no hub here: its "model card / license not found" warnings are noise
        try:
            with fluent_store(self.tracking_uri, self.experiment_id):
                info = self._call(
                    lambda: mlflow.transformers.log_model(
                        {"model": model, "tokenizer": tokenizer},
                        name=MODEL_NAME,
                        task="text-generation",
                        run_id=self._run_id,
                        step=step,
                        registered_model_name=registered_name,
                        pip_requirements=requirements,
                    )
                )
        finally:
            flavour_log.setLevel(level)
        self.set_tags({"steer.model_uri": info.model_uri})
        return info.model_uri

    def close(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self._closed:
            return
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        self._call(lambda: self.client.set_terminated(self._run_id, status=status))
        self._closed = True

    def _call(self, fn: Callable[[], T]) -> T:
        if self.tracking_uri.startswith(("http://", "https://")):
            return fn()  # through a server, MLflow's REST client retries with backoff itself (MLFLOW_HTTP_REQUEST_*)
        return with_retries(fn, attempts=self._attempts, base_delay=self._base_delay)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        found = self._call(lambda: self.client.get_experiment_by_name(name))
        if found is not None:
            for k, v in EXPERIMENT_TAGS.items():  # an experiment made by another tool opens on runs too
                if found.tags.get(k) is None:
                    self._call(lambda k=k, v=v: self.client.set_experiment_tag(found.experiment_id, k, v))
            return found.experiment_id
        try:
            return self._call(
                lambda: self.client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
            )
        except MlflowException as e:  # created meanwhile by another process
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._call(lambda: self.client.get_experiment_by_name(name)).experiment_id

    def _open_existing(self):
        """Reopen the recorded run, mark it running, and note which (metric, step) pairs it already holds."""
        try:
            run = self._call(lambda: self.client.get_run(self._run_id))
        except MlflowException as e:
            raise RuntimeError(
                f"{self.output_dir / RUN_ID_FILE} names MLflow run {self._run_id}, which the store {self.tracking_uri}"
                f" does not have. Point MLFLOW_TRACKING_URI at the store that holds it, or delete the file to start "
                f"a new run."
            ) from e
        if run.info.status != "RUNNING":
            self._call(lambda: self.client.update_run(self._run_id, status="RUNNING"))
        for key in run.data.metrics:
            history = self._call(lambda key=key: self.client.get_metric_history(self._run_id, key))
            self._logged.update((key, m.step) for m in history)
        return run
