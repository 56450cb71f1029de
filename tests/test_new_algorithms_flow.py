"""Issue 15's new presets train through the real flow (Prefect, MLflow, Parquet) on the test-size policy, and the
ablation accepts each as an arm. One step each: structure only (finite metrics, weights in range), no threshold."""

import json
import math

import pytest
from test_train_flow import SMALL, metric_history

from flows.train import train
from steer.ablation import AblationConfig, select_arms
from steer.checkpoint import latest_checkpoint
from steer.config import load_config
from steer.rollout_store import read_rollouts

pytestmark = pytest.mark.flow

NEW = [
    "grpo_clip_higher",
    "steer_paper",
    "steer_released",
    "steer_robust",
    "clip_cov_7b",
    "gspo",
    "cispo",
    "adaptive_entropy",
    "stare",
]


def test_the_ablation_accepts_every_new_preset_as_an_arm(tmp_path):
    jobs = AblationConfig(arms=select_arms(NEW), seeds=[0], steps=1).jobs(tmp_path)
    assert [j.arm for j in jobs] == NEW
    assert [j.config.algorithm.name for j in jobs] == NEW


def test_each_new_algorithm_trains_a_step_on_the_small_policy(prefect_harness, small_policy, tmp_path):
    small = {**SMALL, "steps": 1, "data": {"heldout_size": 4, "train_size": 200}, "eval": {"every": 1}}
    for name in NEW:
        out = tmp_path / name
        summary = train(load_config("tiny", {**small, "output_dir": str(out)}, algorithm=name))
        assert summary["algorithm"] == name and summary["steps"] == 1
        for key in ("actor/pg_loss", "actor/grad_norm", "steer/weight_mean", "actor/entropy_coef"):
            [value] = metric_history(out, key).values()
            assert math.isfinite(value), (name, key)
        weights = [w for r in read_rollouts(out / "rollouts").to_pylist() for w in r["steer_weight"]]
        lo, hi = {"steer_paper": (0.7, 1.0), "steer_robust": (0.7, 1.0), "steer_released": (0.8, 1.0)}.get(
            name, (0.0, 1.1) if name == "stare" else (1.0, 1.0)
        )
        assert all(lo - 1e-6 <= w <= hi + 1e-6 for w in weights), name
        if name == "adaptive_entropy":  # the steered coefficient is in the checkpoint, for a resume to continue it
            manifest = json.loads((latest_checkpoint(out / "checkpoints") / "manifest.json").read_text())
            [h] = metric_history(out, "rollout/entropy").values()
            coef = manifest["extra"]["objective"]["entropy_control"]["coef"]
            assert coef == pytest.approx(0.005 if h < 0.2 else 0.0)  # c_1 = clamp(c_0 +- delta, 0, max), c_0 = 0
