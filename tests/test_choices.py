"""Registry-backed config fields are closed choices: pydantic rejects a typo when a config is built, the JSON
schemas (the Prefect UI's forms) list the choices as drop-downs, and the CLI refuses a typo before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from steer import choices
from steer.advantages import ADVANTAGE_ESTIMATORS
from steer.aggregation import AGGREGATIONS
from steer.algorithms import ALGORITHMS
from steer.config import RunConfig, load_config
from steer.losses import KL_ESTIMATORS
from steer.normalisers import NORMALISERS
from steer.registry import Registry
from steer.reweighting import OMEGA_FORMS, WEIGHT_MAPS
from steer.rollout.base import ROLLOUT_BACKENDS
from steer.rollout_correction import ROLLOUT_CORRECTIONS
from steer.runtime import TRAINER_BACKENDS
from steer.studies.estimator import OPTIMIZERS
from tasks.fanout import TASK_RUNNERS

pytestmark = pytest.mark.unit

PAIRS = {
    "ADVANTAGE_ESTIMATORS": ADVANTAGE_ESTIMATORS,
    "AGGREGATIONS": AGGREGATIONS,
    "KL_ESTIMATORS": KL_ESTIMATORS,
    "OMEGA_FORMS": OMEGA_FORMS,
    "WEIGHT_MAPS": WEIGHT_MAPS,
    "NORMALISERS": NORMALISERS,
    "ROLLOUT_BACKENDS": ROLLOUT_BACKENDS,
    "OPTIMIZERS": OPTIMIZERS,
    "ROLLOUT_CORRECTIONS": ROLLOUT_CORRECTIONS,
    "SCORING_RUNNERS": TASK_RUNNERS,
    "TRAINER_BACKENDS": TRAINER_BACKENDS,
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_every_declared_choice_is_registered_and_nothing_else(name):
    assert sorted(getattr(choices, name)) == PAIRS[name].names()


def test_a_registry_refuses_a_name_its_config_field_would_reject():
    reg = Registry("toy", choices=("a", "b"))
    reg.register("a")(1)
    with pytest.raises(ValueError, match="'c' is not declared in steer.choices"):
        reg.register("c")(2)


def _enum_at(schema: dict, path: list[str]) -> list[str]:
    """The enum of the field at ``path`` in a pydantic JSON schema ($refs and discriminated unions followed)."""
    defs = schema.get("$defs", {})

    def deref(node: dict) -> dict:
        while "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        return node

    node = deref(schema)
    for key in path:
        if key.startswith("variant="):  # pick the union member whose name is this
            tag = key.split("=", 1)[1]
            members = [deref(m) for m in node.get("oneOf", node.get("anyOf", []))]
            node = next(m for m in members if m["properties"]["name"].get("const") == tag)
            continue
        node = deref(node["properties"][key])
    return node.get("enum") or [node["const"]]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (["algorithm", "advantage_estimator"], choices.ADVANTAGE_ESTIMATORS),
        (["algorithm", "loss_agg_mode"], choices.AGGREGATIONS),
        (["algorithm", "kl_estimator"], choices.KL_ESTIMATORS),
        (["algorithm", "token_weighting", "variant=steer", "form"], choices.OMEGA_FORMS),
        (["algorithm", "token_weighting", "variant=steer", "map"], choices.WEIGHT_MAPS),
        (["algorithm", "token_weighting", "variant=steer", "normaliser"], choices.NORMALISERS),
        (["rollout", "backend"], choices.ROLLOUT_BACKENDS),
        (["reward_mode"], ("pm1", "01")),
    ],
)
def test_the_run_form_shows_each_registry_backed_field_as_a_drop_down(path, expected):
    assert tuple(_enum_at(RunConfig.model_json_schema(), path)) == tuple(expected)


def test_the_ablation_and_study_forms_list_their_choices():
    from steer.ablation import AblationConfig
    from steer.studies.config import EstimatorStudyConfig

    arm = AblationConfig.model_json_schema()["$defs"]["ArmSpec"]["properties"]["algorithm"]
    assert arm["enum"] == ALGORITHMS.names()
    cell = EstimatorStudyConfig.model_json_schema()["$defs"]["OptimizerCell"]["properties"]["name"]
    assert cell["enum"] == list(choices.OPTIMIZERS)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("algorithm.advantage_estimator", "grpoo"),
        ("algorithm.loss_agg_mode", "token_mean"),
        ("algorithm.token_weighting.normaliser", "mikro"),
        ("rollout.backend", "vlm"),
    ],
)
def test_load_config_names_the_field_the_typo_and_the_choices(key, value):
    from steer.config import ConfigError

    with pytest.raises(ConfigError, match=rf"{key}: '{value}' is not one of: '"):
        load_config("tiny", {key: value}, algorithm="steer")


def test_the_cli_refuses_a_typo_before_importing_torch_or_prefect():
    """`steer train` with a typo exits 2 naming the field, having imported neither torch nor Prefect (so it answers
    at once, and nothing starts); `--help-config` of a preset answers the same way."""
    code = (
        "import sys, json; from steer_cli.main import main; "
        "rc = main(sys.argv[1:]); "
        "print(json.dumps([rc, 'torch' in sys.modules, 'prefect' in sys.modules]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "train", "--set", "algorithm.advantage_estimator=grpoo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [2, False, False], run.stderr
    assert "algorithm.advantage_estimator: 'grpoo' is not one of: 'grpo'" in run.stderr
    helped = subprocess.run(
        [sys.executable, "-c", code, "train", "--preset", "study", "--algorithm", "grpo", "--help-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = helped.stdout.splitlines()
    assert json.loads(out[-1]) == [0, False, False], helped.stderr
    assert "preset = 'study'" in out and "algorithm.clip.eps_high = 0.2" in out  # the resolved config, not defaults
