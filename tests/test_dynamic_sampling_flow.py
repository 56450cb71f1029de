"""DAPO's dynamic sampling and overlong shaping in the real training flow, on the test-size policy: every trained
group has reward variance > 0 and the batch holds B groups (or the bound is reported), and a step redone after a
resume replays the same prompts, responses and rewards."""

from __future__ import annotations

import shutil

import pytest
from test_train_flow import metric_history, small_config

from flows.train import train
from steer.rollout_store import read_rollouts

pytestmark = pytest.mark.flow

B, G = 4, 4
DAPO = {
    "steps": 2,
    "dynamic_sampling": {"enabled": True, "max_extra_rounds": 3},
    "overlong_penalty": {"enabled": True, "cache": 4},  # L_max = rollout.max_new_tokens = 8: penalised from 5 tokens
}


def _steps(out):
    rows = read_rollouts(out / "rollouts", ["step", "prompt_id", "response", "reward", "correct", "length"]).to_pylist()
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    return by_step


def test_dynamic_sampling_trains_on_informative_groups_and_a_resumed_step_replays(
    prefect_harness, small_policy, tmp_path
):
    out = tmp_path / "run"
    train(small_config(out, **DAPO))
    steps = _steps(out)
    assert sorted(steps) == [0, 1]
    bound = metric_history(out, "rollout/dynamic_sampling_bound_reached")
    for step, rows in steps.items():
        groups = [rows[i : i + G] for i in range(0, len(rows), G)]  # rows are stored response by response, n = b*G+g
        assert all(len({r["prompt_id"] for r in grp}) == 1 for grp in groups)
        assert all(len({r["reward"] for r in grp}) > 1 for grp in groups), step  # reward variance > 0
        assert len(groups) == B or bound[step] == 1.0
        assert metric_history(out, "rollout/dynamic_sampling_groups")[step] == len(groups)
        for r in rows:  # the overlong penalty: 0 up to 4 tokens, then (4 - |y|) / 4, added to +1/-1
            penalty = max(-1.0, min(0.0, (4 - r["length"]) / 4))
            assert r["reward"] == pytest.approx((1.0 if r["correct"] else -1.0) + penalty)
    assert set(metric_history(out, "rollout/dynamic_sampling_rounds").values()) <= {0.0, 1.0, 2.0, 3.0}
    assert sorted(metric_history(out, "reward/overlong_shaped_frac")) == [0, 1]

    # resume: drop the last checkpoint, so step 1 is redone from the checkpoint after step 0
    shutil.rmtree(out / "checkpoints" / "step-000002")
    before = steps[1]
    train(small_config(out, **DAPO))
    after = _steps(out)[1]
    assert [(r["prompt_id"], r["response"], r["reward"]) for r in after] == [
        (r["prompt_id"], r["response"], r["reward"]) for r in before
    ]
