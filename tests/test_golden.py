"""Seeded ``steer train --preset tiny --steps 5`` (small batch, the test-size policy, one torch thread) is
bit-identical to the recorded hashes (per-step metrics and final weights) for steer, grpo, clip_cov and fork_tokens.

The hashes in tests/golden/train_hashes.json were recorded on the tree before the issue-12 redesign (a17430e) with
``scripts/golden_hashes.py --small --model <test-size policy> --threads 1 --write ...``. Seeded bits hold on one kind
of machine only (the policy is warm-started here; torch's CPU kernels differ by instruction set), so the file
carries the fingerprint of the machine it was made on, and on any other machine this test skips with the way to
record anew."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = json.loads((ROOT / "tests" / "golden" / "train_hashes.json").read_text())
THREADS = 1


def _golden():
    spec = importlib.util.spec_from_file_location("golden_hashes", ROOT / "scripts" / "golden_hashes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden():
    module = _golden()
    here = module.fingerprint(THREADS)
    if here != EXPECTED["fingerprint"]:
        pytest.skip(
            f"the golden hashes were recorded on {EXPECTED['fingerprint']}, this machine is {here}: to compare a change"
            " here, record them on the commit before it with scripts/golden_hashes.py --small --model <policy> "
            "--threads 1 --write tests/golden/train_hashes.json"
        )
    return module


@pytest.mark.parametrize("algorithm", sorted(EXPECTED["hashes"]))
def test_seeded_training_gives_the_recorded_metrics_and_weights(
    golden, prefect_harness, small_policy, tmp_path, algorithm
):
    assert EXPECTED["small"] and EXPECTED["steps"] == 5
    got = golden.run_hashes(algorithm, tmp_path, small=True, model=small_policy, threads=THREADS)
    expected = EXPECTED["hashes"][algorithm]
    assert got["weights"] == expected["weights"]
    changed = sorted(k for k in expected["metrics"] if got["metrics"].get(k) != expected["metrics"][k])
    assert not changed, f"metrics that differ from the recorded run: {changed}"  # metrics added since are not compared
