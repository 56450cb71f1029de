"""Resuming with a changed config: breaking changes are refused with the fields named, safe ones become a new
config version (``steer.resume``)."""

from __future__ import annotations

import pytest

from steer.config import load_config
from steer.resume import SAFE_ON_RESUME, ResumeConfigError, check_resume

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def saved():
    return load_config("tiny", {"output_dir": "/runs/a"}).model_dump(mode="json")


def test_a_changed_algorithm_seed_and_lr_are_refused_with_the_fields_and_the_fix(saved):
    new = load_config("tiny", {"output_dir": "/runs/a", "seed": 7, "optim": {"lr": 1e-2}}, algorithm="grpo")
    with pytest.raises(ResumeConfigError) as e:
        check_resume(saved, new, "/runs/a/checkpoints/step-000002")
    msg = str(e.value)
    assert "/runs/a/checkpoints/step-000002" in msg
    for fragment in ("algorithm.name: 'steer' -> 'grpo'", "seed: '0' -> '7'", "optim.lr: ", "--set seed=0"):
        assert fragment in msg, fragment
    assert "another --output-dir" in msg and "steps" not in msg.split("Safe to change")[0]


def test_safe_changes_are_a_new_config_version_and_a_moved_folder_is_no_change(saved):
    new = load_config("tiny", {"output_dir": "/moved/a", "steps": 99, "eval": {"every": 1}})
    check = check_resume(saved, new, "ckpt", version=2)
    assert check.safe == {"eval.every": (str(saved["eval"]["every"]), "1"), "steps": (str(saved["steps"]), "99")}
    assert check.version == 3
    assert check.params(from_step=4) == {"config_v3": {"from_step": "4", "steps": "99", "eval": {"every": "1"}}}
    same = check_resume(saved, load_config("tiny", {"output_dir": "/moved/a"}), "ckpt", version=2)
    assert (same.safe, same.version) == ({}, 2)


def test_a_checkpoint_without_a_saved_config_is_accepted_and_the_safe_list_names_real_fields(saved):
    assert check_resume(None, load_config("tiny", {"seed": 3}), "old").safe == {}
    from steer.tracking import flatten_params

    assert set(SAFE_ON_RESUME) <= set(flatten_params(saved))
