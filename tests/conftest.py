"""Shared test settings: offline, no telemetry, one Prefect harness per session, one policy cache per checkout, and
the test tiers.

Every test belongs to exactly one tier, declared per module with ``pytestmark = pytest.mark.<tier>`` (a single test
may move to ``slow`` with its own mark). A test without a tier is a collection error, so nothing runs untiered:

- ``unit``: pure functions, tensors, configs, CLI parsing, file formats, sandboxed subprocesses; no Prefect, no
  MLflow store, no flow.
- ``flow``: the real Prefect flows on the ephemeral server, tasks through ``.fn()``, MLflow sqlite stores, Parquet.
- ``service``: a real Prefect server + worker + MLflow server (``scripts/service.sh``), deployments, the API.
- ``slow``: long runs, SmolLM2, and every threshold on a statistic of a policy the machine trains or builds itself
  (each such test states in its docstring the spread its threshold was derived from).

``make test`` (the README's, called by ``.ci/run``) runs unit + flow + service; ``make test-slow`` the rest. A run
picks tiers with ``--tier`` (``pytest --tier unit``); a test's own tier mark wins over its module's.
``STEER_TEST_TORCH_THREADS=N`` runs the session with N torch threads (default 1; the verdicts must not depend on it).
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "flow", "service", "slow")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# built policies (the embedded tiny model) are cached per checkout, so a second test run skips the build
os.environ.setdefault("STEER_CACHE_DIR", str(ROOT / ".cache" / "steer"))

# One torch thread by default: the tests' tensors are tiny, and on two cores a second thread only adds OpenMP
# overhead (measured: tests/test_update.py took 26 s with 1 thread, 106 s with 2, on a busy machine). The verdicts
# must not depend on it: `STEER_TEST_TORCH_THREADS=2 make test` runs the same tests with two.
TORCH_THREADS = int(os.environ.setdefault("STEER_TEST_TORCH_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = str(TORCH_THREADS)  # subprocesses (the CLI, a worker's flow run) inherit it
import torch  # noqa: E402

torch.set_num_threads(TORCH_THREADS)


def pytest_addoption(parser):
    parser.addoption(
        "--tier",
        default="unit,flow,service",
        help="comma-separated tiers to run (unit, flow, service, slow); default: the README's tier unit,flow,service",
    )


def tier_of(item) -> str | None:
    """The closest tier marker: a test's own mark wins over its class's and its module's."""
    return next((m.name for m in item.iter_markers() if m.name in TIERS), None)


def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items if tier_of(item) is None]
    if untiered:
        raise pytest.UsageError(
            "tests without a tier (add `pytestmark = pytest.mark.unit` or flow/service/slow at the top of the "
            "module; see tests/conftest.py):\n  " + "\n  ".join(untiered[:20])
        )
    wanted = {t.strip() for t in config.getoption("--tier").split(",") if t.strip()}
    if unknown := wanted - set(TIERS):
        raise pytest.UsageError(f"--tier {','.join(sorted(unknown))}: not a tier; use some of {', '.join(TIERS)}")
    keep = [item for item in items if tier_of(item) in wanted]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if tier_of(item) not in wanted])
        items[:] = keep


def pytest_report_header(config):
    return f"torch threads: {torch.get_num_threads()}, STEER_CACHE_DIR: {os.environ['STEER_CACHE_DIR']}"


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API (temporary database) shared by every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def small_policy() -> str:
    """The test-size embedded policy (tests/policies.py), built once per cache folder; its path."""
    from policies import ensure_small_policy

    return ensure_small_policy()
