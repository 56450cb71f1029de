"""Issue 15's presets pinned against the method spec's numbers (/work/shared/method.md, "STEER weights",
"Baselines", "Per-token policy loss")."""

import pytest

from steer.algorithms import ALGORITHMS, get_algorithm

pytestmark = pytest.mark.unit


def test_steer_paper_is_the_first_order_form_at_lambda_min_0_7_over_8_sequences():
    tw = get_algorithm("steer_paper").token_weighting
    assert (tw.name, tw.form, tw.map, tw.lambda_min) == ("steer", "first_order", "exp", 0.7)
    assert (tw.normaliser, tw.normaliser_group, tw.floor) == ("group", 8, 0.0)


def test_steer_released_is_the_released_script():
    tw = get_algorithm("steer_released").token_weighting
    assert (tw.name, tw.form, tw.map, tw.lambda_min) == ("steer", "released", "exp", 0.8)
    assert (tw.normaliser, tw.normaliser_group, tw.floor) == ("group", 8, 0.02)


@pytest.mark.parametrize("name", ["steer_paper", "steer_released", "grpo_clip_higher"])
def test_the_paper_arms_use_clip_higher_with_dual_clip(name):
    c = get_algorithm(name).clip
    assert (c.eps_low, c.eps_high, c.dual_clip_c) == (0.2, 0.28, 10.0)
    assert get_algorithm(name).loss_agg_mode == "token-mean"


def test_grpo_clip_higher_has_no_intervention_and_grpo_stays_the_symmetric_extra_arm():
    a = get_algorithm("grpo_clip_higher")
    assert (a.policy_loss.name, a.token_weighting.name, a.advantage_shaping.name, a.entropy_coef) == (
        "ppo_clip",
        "none",
        "none",
        0.0,
    )
    assert get_algorithm("grpo").clip.eps_high == 0.2


def test_clip_cov_7b_is_cuis_recipe():
    a = get_algorithm("clip_cov_7b")
    assert (a.clip.eps_low, a.clip.eps_high, a.clip.dual_clip_c) == (1.0, 1.0, None)
    pl = a.policy_loss
    assert (pl.name, pl.clip_ratio, pl.cov_lb, pl.cov_ub) == ("clip_cov", 2e-4, 1.0, 5.0)


def test_steer_robust_is_steer_paper_with_the_quantile_normaliser():
    paper, robust = get_algorithm("steer_paper").token_weighting, get_algorithm("steer_robust").token_weighting
    assert (robust.normaliser, robust.quantile) == ("group_quantile", 0.99)
    assert robust.model_dump(exclude={"normaliser"}) == paper.model_dump(exclude={"normaliser"})


def test_every_preset_validates():
    for name in ALGORITHMS.names():
        assert get_algorithm(name).name == name


def test_the_baselines_study_runs_the_eleven_arms_on_the_collapse_preset(tmp_path):
    from steer.ablation import STUDIES

    jobs = STUDIES["baselines"].config(seeds=[0], steps=2).jobs(tmp_path)
    assert len(jobs) == 11 and {"grpo", "grpo_clip_higher", "steer_paper", "stare", "gspo"} <= {j.arm for j in jobs}
    assert {j.config.model_dump_json(exclude={"algorithm", "output_dir"}) for j in jobs}.__len__() == 1
    assert all(j.config.preset == "collapse" and j.config.steps == 2 for j in jobs)
