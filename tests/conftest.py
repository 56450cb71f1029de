"""Shared test settings: offline, no telemetry, one Prefect harness per session, one policy cache per checkout."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# built policies (the embedded tiny model) are cached per checkout, so a second test run skips the build
os.environ.setdefault("STEER_CACHE_DIR", str(ROOT / ".cache" / "steer"))


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API (temporary database) shared by every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
