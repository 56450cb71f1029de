"""AblationConfig: default arms, arm selection, the override order, validation messages that name the fix."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from steer.ablation import DEFAULT_ARMS, AblationConfig, ArmSpec, select_arms
from steer.config import ConfigError, load_config

pytestmark = pytest.mark.unit


def test_default_arms_are_the_papers_comparison():
    assert [a.name for a in DEFAULT_ARMS] == [
        "grpo",
        "clip_higher",
        "entropy_bonus",
        "clip_cov",
        "kl_cov",
        "steer_0.6",
        "steer_0.7",
        "steer_0.8",
    ]
    jobs = AblationConfig(seeds=[0]).jobs(Path("root"))
    weightings = {j.arm: j.config.algorithm.token_weighting for j in jobs}
    lam = {arm: w.lambda_min for arm, w in weightings.items() if w.name == "steer"}
    assert lam == {"steer_0.6": 0.6, "steer_0.7": 0.7, "steer_0.8": 0.8}
    by_arm = {j.arm: j.config.algorithm for j in jobs}
    assert by_arm["grpo"].clip.eps_high == 0.2 and by_arm["kl_cov"].policy_loss.name == "kl_cov"


def test_jobs_layout_and_override_order():
    cfg = AblationConfig(
        arms=[
            ArmSpec(
                name="lo", algorithm="steer", overrides={"algorithm.token_weighting.lambda_min": 0.6, "optim.lr": 3e-4}
            )
        ],
        seeds=[0, 5],
        steps=7,
        overrides={"optim.lr": 1e-4, "rollout": {"max_new_tokens": 9}},
    )
    jobs = cfg.jobs(Path("out"))
    assert [(j.arm, j.seed) for j in jobs] == [("lo", 0), ("lo", 5)]
    c = jobs[1].config
    assert c.output_dir == str(Path("out/lo/seed-5")) and c.seed == 5 and c.steps == 7
    assert c.optim.lr == 3e-4  # the arm's override wins over the ablation's
    assert c.rollout.max_new_tokens == 9 and c.algorithm.token_weighting.lambda_min == 0.6
    assert c.experiment == "steer-ablation" and c.algorithm.name == "steer"
    assert c.rollout.prompts_per_step == load_config("tiny").rollout.prompts_per_step  # the rest is the preset


def test_select_arms_and_dated_root():
    assert [a.name for a in select_arms(["grpo", "steer_0.8", "fork_tokens"])] == ["grpo", "steer_0.8", "fork_tokens"]
    with pytest.raises(ConfigError, match="unknown arm 'stear'.*steer_0.7"):
        select_arms(["stear"])
    root = AblationConfig(output_root="runs/nightly/{date}-{time}").resolved_root(
        datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    )
    assert root == Path("runs/nightly/2025-03-04-050607")


def test_invalid_settings_name_the_fix():
    with pytest.raises(ValidationError, match="arm names repeat: grpo"):
        AblationConfig(arms=[ArmSpec(name="grpo", algorithm="grpo")] * 2)
    with pytest.raises(ValidationError, match="must match"):
        ArmSpec(name="Steer 0.7", algorithm="steer")
    with pytest.raises(ValidationError, match="Input should be .*'clip_cov', 'clip_cov_7b', 'clip_higher'"):
        ArmSpec(name="x", algorithm="ppo")
    with pytest.raises(ValidationError, match="repeat a seed"):
        AblationConfig(seeds=[1, 1])
    bad = AblationConfig(arms=[ArmSpec(name="x", algorithm="grpo", overrides={"optim.mini_batch_prompts": 5})])
    with pytest.raises(ConfigError, match=r"(?s)arm .x., seed 0: .*mini_batch_prompts=5 must divide"):
        bad.jobs()


def test_studies_expand_into_valid_runs_that_differ_only_where_they_should():
    """Issue 6's studies 2 and 3: every run validates, and arms differ from each other only in the algorithm."""
    from steer.ablation import STUDIES

    collapse = STUDIES["collapse"].config(steps=3).jobs(Path("/tmp/r"))
    assert [j.arm for j in collapse[::3]] == ["grpo", "steer_0.7", "clip_cov", "entropy_bonus"]
    assert {j.seed for j in collapse} == {0, 1, 2} and all(j.config.steps == 3 for j in collapse)
    assert {j.config.model_dump_json(exclude={"algorithm", "seed", "output_dir"}) for j in collapse}.__len__() == 1

    sens = {j.arm: j.config.algorithm for j in STUDIES["sensitivity"].config(seeds=[0]).jobs(Path("/tmp/r"))}
    lams = {a: c.token_weighting.lambda_min for a, c in sens.items() if c.token_weighting.normaliser == "group"}
    assert lams == {f"steer_{x}": x for x in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}
    scopes = {c.token_weighting.normaliser for c in sens.values() if c.token_weighting.lambda_min == 0.7}
    assert scopes == {"group", "mini", "rollout", "running"}
    assert all(c.token_weighting.name == "steer" for c in sens.values())
