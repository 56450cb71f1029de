"""Fault injection into real verifier worker processes (``STEER_POOL_WRAP``, read by ``steer.verifiers._pool_worker``).

``crash_on_marker(fn)`` wraps a pool worker's function: an item whose response contains ``STEER_FAULT_MARKER`` makes
the worker ``os._exit(70)`` (a segfault or an OOM kill, as far as the pool can tell), at most ``STEER_FAULT_TIMES``
times in all (counted with files in ``STEER_FAULT_DIR``, shared by every worker and its replacements; unset: every
time). ``STEER_FAULT_KIND=raise`` raises ``MemoryError`` instead: an exception escaping ``verify_math``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def crash_on_marker(fn):
    marker = os.environ["STEER_FAULT_MARKER"]
    times = int(os.environ.get("STEER_FAULT_TIMES", "-1"))
    folder = Path(os.environ["STEER_FAULT_DIR"])

    def wrapped(item):
        response = item[0]
        if marker in response and (times < 0 or len(list(folder.iterdir())) < times):
            (folder / uuid.uuid4().hex).touch()
            if os.environ.get("STEER_FAULT_KIND") == "raise":
                raise MemoryError("injected fault inside the verifier")
            os._exit(70)
        return fn(item)

    return wrapped


def fault_env(monkeypatch, folder: Path, marker: str, times: int = -1, kind: str = "crash") -> None:
    """Set the environment a pool started afterwards reads: its workers run ``crash_on_marker``."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("STEER_POOL_WRAP", "faults:crash_on_marker")
    monkeypatch.setenv("STEER_FAULT_MARKER", marker)
    monkeypatch.setenv("STEER_FAULT_TIMES", str(times))
    monkeypatch.setenv("STEER_FAULT_DIR", str(folder))
    monkeypatch.setenv("STEER_FAULT_KIND", kind)
    tests = str(Path(__file__).parent)  # workers are fresh interpreters: they import this module by its path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))


def faults_fired(folder: Path) -> int:
    return len(list(folder.iterdir()))
