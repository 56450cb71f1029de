"""``steer study collapse`` / ``sensitivity``: the flags become the study's AblationConfig, and bad flags are refused
with exit status 2 before Prefect starts (the ablation flow itself is covered by tests/test_ablate_flow.py)."""

from __future__ import annotations

import argparse

import pytest

from steer.ablation import STUDIES
from steer_cli.main import build_parser, main

pytestmark = pytest.mark.unit


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["study", *argv])


def test_flags_become_the_studys_ablation_config(tmp_path):
    from steer_cli.commands.study_ablation import build_config

    cfg = build_config(
        "sensitivity",
        _args(
            [
                "sensitivity",
                "--arms",
                "steer_1.0,steer_0.7_running",
                "--seeds",
                "3",
                "--steps",
                "7",
                "--set",
                "optim.lr=2e-4",
                "--output-dir",
                str(tmp_path),
            ]
        ),
    )
    assert [a.name for a in cfg.arms] == ["steer_1.0", "steer_0.7_running"] and cfg.seeds == [3]
    jobs = cfg.jobs()
    assert {j.config.steps for j in jobs} == {7} and {j.config.optim.lr for j in jobs} == {2e-4}
    weightings = [j.config.algorithm.token_weighting for j in jobs]
    assert weightings[1].normaliser == "running" and weightings[0].lambda_min == 1.0
    assert all(j.config.output_dir.startswith(str(tmp_path)) for j in jobs)

    default = build_config("collapse", _args(["collapse"]))
    assert default.arms == list(STUDIES["collapse"].arms) and default.seeds == [0, 1, 2]
    assert default.output_root == "runs/study-collapse" and default.preset == "study"
    from steer_cli.commands.study import STUDY_COMMANDS

    assert set(STUDY_COMMANDS) == {"estimator", *STUDIES}  # a sub-command per study of the one table, and no other


def test_bad_flags_exit_2_naming_the_flag(capsys, tmp_path):
    assert main(["study", "collapse", "--arms", "kl_cov", "--output-dir", str(tmp_path)]) == 2
    assert "--arms kl_cov" in capsys.readouterr().err
    assert main(["study", "sensitivity", "--seeds", "0,x", "--output-dir", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["study", "collapse", "--set", "optim.lr=-1", "--output-dir", str(tmp_path)]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_building_the_parser_imports_no_torch_prefect_or_mlflow():
    """`steer --help` builds every sub-command's parser: it must answer at once, without the heavy imports."""
    import subprocess
    import sys

    code = (
        "import sys; from steer_cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
