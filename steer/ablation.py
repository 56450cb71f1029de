"""An ablation: arms (an algorithm preset plus overrides each) x seeds, all on one base preset.

``AblationConfig`` is the typed parameter of the Prefect flow ``flows/ablate.py`` (the Prefect UI shows it as a
form) and of ``steer ablate``. ``AblationConfig.jobs()`` expands it into one validated ``RunConfig`` per arm and
seed, each writing to ``<output_root>/<arm>/seed-<seed>``. No Prefect or MLflow here.

    AblationConfig(arms=select_arms(["grpo", "steer_0.7"]), seeds=[0, 1], steps=20).jobs()
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steer.algorithms import ALGORITHMS, AlgorithmName
from steer.config import ConfigError, RunConfig, load_config, merge, nest

ARM_NAME = re.compile(r"[a-z0-9_.\-]+")
"""Arm names become folder names and MLflow tag values: lower case, digits, ``_ . -``."""


class ArmSpec(BaseModel):
    """One arm of the ablation: an algorithm preset and the settings that distinguish it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Label in plots, tables, folders and the MLflow tag steer.arm ([a-z0-9_.-]).")
    algorithm: AlgorithmName = Field(
        description="Algorithm preset (steer.algorithms.ALGORITHMS): grpo, steer, clip_cov, ..."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted run settings for this arm only, e.g. {'algorithm.token_weighting.lambda_min': 0.6}; they "
        "win over the ablation-wide overrides.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not ARM_NAME.fullmatch(v):
            raise ValueError(f"arm name {v!r} must match [a-z0-9_.-]+ (it becomes a folder and a tag), e.g. steer_0.6")
        return v


def _steer(lambda_min: float) -> ArmSpec:
    return ArmSpec(
        name=f"steer_{lambda_min}", algorithm="steer", overrides={"algorithm.token_weighting.lambda_min": lambda_min}
    )


DEFAULT_ARMS: list[ArmSpec] = [
    ArmSpec(name="grpo", algorithm="grpo"),
    ArmSpec(name="clip_higher", algorithm="clip_higher"),
    ArmSpec(name="entropy_bonus", algorithm="entropy_bonus"),
    ArmSpec(name="clip_cov", algorithm="clip_cov"),
    ArmSpec(name="kl_cov", algorithm="kl_cov"),
    *(_steer(lam) for lam in (0.6, 0.7, 0.8)),
]
"""The paper's comparison: the baselines and STEER at lambda_min 0.6 / 0.7 (the paper's) / 0.8 (released script)."""

LAMBDA_MIN_ARMS: list[ArmSpec] = [ArmSpec(name="clip_higher", algorithm="clip_higher")] + DEFAULT_ARMS[-3:]
"""The lambda_min sweep: STEER at 0.6, 0.7, 0.8 against clip-higher (STEER with lambda_min = 1 is exactly it)."""


def _scope(scope: str, lambda_min: float = 0.7) -> ArmSpec:
    return ArmSpec(
        name=f"steer_{lambda_min}_{scope}",
        algorithm="steer",
        overrides={"algorithm.token_weighting.lambda_min": lambda_min, "algorithm.token_weighting.normaliser": scope},
    )


@dataclass(frozen=True)
class Study:
    """A named ablation of issue 6's studies: its arms, base preset, seeds and default output folder."""

    arms: tuple[ArmSpec, ...]
    preset: str
    seeds: tuple[int, ...]
    output_root: str
    experiment: str

    def config(self, **changes: Any) -> AblationConfig:
        """The study as an ``AblationConfig``; ``changes`` replace its fields (seeds, steps, overrides, ...)."""
        base = dict(
            preset=self.preset,
            arms=list(self.arms),
            seeds=list(self.seeds),
            output_root=self.output_root,
            experiment=self.experiment,
        )
        return AblationConfig(**{**base, **{k: v for k, v in changes.items() if v is not None}})


STUDIES: dict[str, Study] = {
    "collapse": Study(
        arms=(
            ArmSpec(name="grpo", algorithm="grpo"),
            _steer(0.7),
            ArmSpec(name="clip_cov", algorithm="clip_cov"),
            ArmSpec(name="entropy_bonus", algorithm="entropy_bonus"),
        ),
        preset="study",
        seeds=(0, 1, 2),
        output_root="runs/study-collapse",
        experiment="steer-study-collapse",
    ),
    "sensitivity": Study(
        arms=(
            *(_steer(lam) for lam in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
            *(_scope(scope) for scope in ("mini", "rollout", "running")),
        ),
        preset="study",
        seeds=(0, 1, 2),
        output_root="runs/study-sensitivity",
        experiment="steer-study-sensitivity",
    ),
    "baselines": Study(
        arms=tuple(
            ArmSpec(name=a, algorithm=a)
            for a in (
                "grpo",
                "grpo_clip_higher",
                "steer_paper",
                "steer_released",
                "steer_robust",
                "clip_cov_7b",
                "kl_cov",
                "entropy_bonus",
                "adaptive_entropy",
                "stare",
                "gspo",
            )
        ),
        preset="collapse",
        seeds=(0, 1, 2),
        output_root="runs/study-baselines",
        experiment="steer-study-baselines",
    ),
}
"""Issue 6's studies 2 and 3 as ablations (``steer study collapse``, ``steer study sensitivity``): collapse asks
whether STEER (lambda_min 0.7) prevents entropy collapse at equal or better accuracy against GRPO, Clip-Cov and the
entropy bonus; sensitivity sweeps lambda_min 0.5..1.0 (1.0 is clip-higher) at the group normaliser (8 sequences) and the
mini-batch, rollout-batch and running-max normalisers at 0.7. Issue 15's ``baselines`` (``steer study baselines``)
runs the 11 arms the field compares with (GRPO as an extra arm, clip-higher GRPO the paper's GRPO row, STEER as the
paper and as the released script, STEER with the robust normaliser, Clip-Cov with Cui's 7B recipe, KL-Cov, the entropy
bonus, adaptive entropy control, STARE, GSPO) on ``collapse.yaml``, where clip-higher GRPO loses more than half of
its entropy (docs/results.md, 4c and 4f). docs/results.md holds their measured results. Study 1
(the estimator) is its own flow, ``flows/estimator_study.py``."""


def select_arms(names: list[str]) -> list[ArmSpec]:
    """Arms by name: a default arm (``steer_0.6``) or any algorithm preset (``fork_tokens``, as is)."""
    by_name = {a.name: a for a in DEFAULT_ARMS}
    out = []
    for n in names:
        if n in by_name:
            out.append(by_name[n])
        elif n in ALGORITHMS:
            out.append(ArmSpec(name=n, algorithm=n))
        else:
            valid = sorted(set(by_name) | set(ALGORITHMS.names()))
            raise ConfigError(f"unknown arm {n!r}: use one of {', '.join(valid)}")
    return out


@dataclass(frozen=True)
class Job:
    """One training run of the ablation."""

    arm: str
    seed: int
    config: RunConfig


class AblationConfig(BaseModel):
    """Arms x seeds on one preset; every run is validated before anything starts."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("tiny", description="Base preset (steer/presets/*.yaml) or a path to a .yaml file.")
    arms: list[ArmSpec] = Field(
        default_factory=lambda: list(DEFAULT_ARMS),
        description="The arms; default: GRPO, clip-higher, entropy bonus, Clip-Cov, KL-Cov, STEER at lambda_min "
        "0.6/0.7/0.8.",
    )
    seeds: list[int] = Field(
        [0, 1, 2], min_length=1, description="Run seeds; three give a usable 95% t-interval (two give a wide one)."
    )
    steps: int | None = Field(None, gt=0, description="RL steps per run; None keeps the preset's.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted run settings for every arm, e.g. {'optim.lr': 1e-4}; arm overrides win.",
    )
    output_root: str = Field(
        "runs/ablation",
        description="Root folder: <root>/<arm>/seed-<seed> per run, the report in <root>/report and, without "
        "MLFLOW_TRACKING_URI, the MLflow store <root>/mlflow.db. {date} and {time} are replaced by the UTC start "
        "(YYYY-MM-DD, HHMMSS), so a scheduled sweep writes a new folder each night; rerunning a folder resumes it.",
    )
    experiment: str = Field("steer-ablation", description="MLflow experiment of the parent and child runs.")
    concurrency: int = Field(
        1, ge=1, description="Runs trained at once (threads). 1 on a small machine; more when cores or GPUs allow."
    )

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat a seed: list each once")
        return v

    @model_validator(mode="after")
    def _check_arms(self) -> AblationConfig:
        if not self.arms:
            raise ValueError("arms is empty: give at least one arm (e.g. the defaults)")
        names = [a.name for a in self.arms]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"arm names repeat: {', '.join(repeated)}; give each arm its own name")
        return self

    def resolved_root(self, now: datetime | None = None) -> Path:
        """``output_root`` with {date} and {time} filled in from ``now`` (UTC)."""
        now = now or datetime.now(UTC)
        return Path(self.output_root.format(date=now.strftime("%Y-%m-%d"), time=now.strftime("%H%M%S")))

    def run_config(self, arm: ArmSpec, seed: int, root: Path) -> RunConfig:
        """The run of ``arm`` with ``seed``: preset < ablation overrides < arm overrides < (algorithm, seed, ...)."""
        over = merge(nest(self.overrides), nest(arm.overrides))
        fixed: dict[str, Any] = {"seed": seed, "output_dir": str(root / arm.name / f"seed-{seed}")}
        fixed["experiment"] = self.experiment
        if self.steps is not None:
            fixed["steps"] = self.steps
        over = merge(over, fixed)
        try:
            return load_config(self.preset, over, algorithm=arm.algorithm)
        except ConfigError as e:
            raise ConfigError(f"arm {arm.name!r}, seed {seed}: {e}") from None

    def jobs(self, root: Path | None = None) -> list[Job]:
        """Every (arm, seed) run, arm-major; raises ``ConfigError`` naming the arm whose settings are invalid."""
        root = root if root is not None else self.resolved_root()
        return [Job(a.name, s, self.run_config(a, s, root)) for a in self.arms for s in self.seeds]
