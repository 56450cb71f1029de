"""Seeded ``steer train --preset tiny --steps 5`` is bit-identical to the recorded hashes (per-step metrics and
final weights) for steer, grpo, clip_cov and fork_tokens. The hashes in tests/golden/train_hashes.json were recorded
on the tree before the issue-12 redesign with ``python scripts/golden_hashes.py --small --write ...`` (twice, equal)."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = json.loads((ROOT / "tests" / "golden" / "train_hashes.json").read_text())


def _golden():
    spec = importlib.util.spec_from_file_location("golden_hashes", ROOT / "scripts" / "golden_hashes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("algorithm", sorted(EXPECTED["hashes"]))
def test_seeded_training_gives_the_recorded_metrics_and_weights(prefect_harness, tmp_path, algorithm):
    assert EXPECTED["small"] and EXPECTED["steps"] == 5
    got = _golden().run_hashes(algorithm, tmp_path, small=True)
    assert got == EXPECTED["hashes"][algorithm]
