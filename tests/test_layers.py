"""The layers of docs/architecture.md hold: steer_cli > flows > tasks > steer, the library free of Prefect and MLflow.

The contracts live in pyproject.toml ([tool.importlinter]); an import arrow up (``steer`` -> ``tasks``, ``tasks`` ->
``flows``, ``steer`` -> ``mlflow``, ...), lazy imports inside functions included, fails here.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_of_pyproject_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0


# programs the code verifier runs inside its sandbox with steer/verifiers/_codec.py's text prepended: they are read as
# text, never imported (on their own they lack the codec's names)
SANDBOX_PROGRAMS = ("steer.verifiers._call_harness", "steer.verifiers._check_replay")


def test_every_library_module_imports_without_prefect_mlflow_or_the_upper_layers():
    code = (
        "import importlib, pkgutil, sys, steer\n"
        "for m in pkgutil.walk_packages(steer.__path__, 'steer.'):\n"
        f"    if m.name not in {SANDBOX_PROGRAMS!r}:\n"
        "        importlib.import_module(m.name)\n"
        "upper = ('prefect', 'mlflow', 'tasks', 'flows', 'steer_cli')\n"
        "print(sorted({k.split('.')[0] for k in sys.modules if k.split('.')[0] in upper}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip() == "[]", f"importing steer loaded {result.stdout.strip()}"
