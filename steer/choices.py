"""The names every registry-backed config field may take, as ``Literal`` types (no torch import).

Config fields that name a registered variant (an advantage estimator, a loss aggregation, a rollout backend, ...) are
typed with these, so pydantic rejects a typo when the config is built, the JSON schema lists the choices (the
Prefect UI shows a drop-down), and ``steer train --help-config`` answers without importing torch. The registries hold
the implementations: ``Registry(kind, choices=...)`` refuses to register a name missing here, and
``tests/test_choices.py`` checks that every name here is registered, so the two cannot drift apart. Verifiers are
not here: their registry is open to plugins (a project's own verifier, the tests' faulty ones), so
``RunConfig.verifier`` is checked against the registry when the config is validated.
"""

from __future__ import annotations

from typing import Literal

ADVANTAGE_ESTIMATORS = ("grpo", "drgrpo", "rloo", "opo", "w_reinforce")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
OMEGA_FORMS = ("first_order", "released")
WEIGHT_MAPS = ("exp", "linear", "asymmetric")
NORMALISERS = ("group", "group_quantile", "micro", "mini", "rollout", "running")
ROLLOUT_BACKENDS = ("hf", "vllm")
OPTIMIZERS = ("sgd", "adamw")
ROLLOUT_CORRECTIONS = ("truncate", "mask")
IS_LEVELS = ("token", "sequence", "geometric")
SCORING_RUNNERS = ("pool", "ray", "dask")
TRAINER_BACKENDS = ("local", "ray")

AdvantageEstimatorName = Literal[ADVANTAGE_ESTIMATORS]
AggregationName = Literal[AGGREGATIONS]
KlEstimatorName = Literal[KL_ESTIMATORS]
OmegaFormName = Literal[OMEGA_FORMS]
WeightMapName = Literal[WEIGHT_MAPS]
NormaliserName = Literal[NORMALISERS]
RolloutBackendName = Literal[ROLLOUT_BACKENDS]
OptimizerName = Literal[OPTIMIZERS]
RolloutCorrectionName = Literal[("none", *ROLLOUT_CORRECTIONS)]  # none: no correction (the default)
IsLevelName = Literal[IS_LEVELS]
ScoringRunnerName = Literal[SCORING_RUNNERS]
TrainerBackendName = Literal[TRAINER_BACKENDS]
