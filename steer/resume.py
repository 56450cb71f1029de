"""Resuming with a changed config: which changes a run can take, and which would make it a different run.

A checkpoint records the config it was trained with (``extra["config"]``, with a ``config_version``). On resume the
new config is compared with it field by field (dotted names, ``steer.tracking.flatten_params``):

- **safe** fields (``SAFE_ON_RESUME``) change how long the run goes, how often it evaluates or checkpoints, or where
  and how fast it computes, never what one step computes. They are applied, and the changed values are logged to
  MLflow as a new param version (``config_v<N>.<field>``, ``config_v<N>.from_step``);
- every other field (algorithm, seed, data, model, learning rate, batch sizes, verifier, ...) is **breaking**: the
  checkpoint's optimizer state, data order and metrics belong to the old values, so the resume is refused with the
  fields named and the fix (``ResumeConfigError``). Unknown new fields are breaking too: the list of safe ones is
  the one place that allows a change.
- ``IGNORED`` fields are not compared (the folder may have been moved or copied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer.checkpoint import MANIFEST, latest_checkpoint
from steer.config import ConfigError, RunConfig
from steer.tracking import flatten_params

SAFE_ON_RESUME: dict[str, str] = {
    "steps": "how long the run goes; the steps done stay as they are",
    "checkpoint_every": "checkpoint cadence",
    "keep_checkpoints": "how many checkpoints stay on disk",
    "eval.every": "evaluation cadence",
    "model.num_threads": "CPU threads: speed only",
    "model.device": "where the run computes (numerics may differ in the last bits)",
    "model.gradient_checkpointing": "recomputes activations: memory for compute, the same gradients",
    "rollout.weight_sync": "how the weights reach the engine, not which weights",
    "rollout.sync_probe_tokens": "a check after the sync, not what a step computes",
    "rollout.sync_probe_tolerance": "a check after the sync, not what a step computes",
    "trainer.backend": "where the update runs; checkpoints hold full weights and optimizer state at any world size",
    "trainer.world_size": "how many ranks share each mini-batch; the global counts keep the gradient the same",
    "trainer.ray_address": "which Ray cluster places the ranks",
    "trainer.collective_timeout_s": "how long a rank may be silent before the update fails",
    "trainer.threads_per_rank": "CPU threads: speed only",
    "trainer.cpu_offload": "where the sharded state lives: memory for speed, the same numbers",
    "trainer.balance_tokens": "which rows each rank trains: the same gradient up to rounding (micro/group M differ)",
    "trainer.mixed_precision": "bf16 compute on GPUs (numerics differ, as with model.device)",
    "tracking.log_model": "what is recorded in MLflow, not what a step computes",
    "tracking.registered_model_name": "what is recorded in MLflow",
    "tracking.log_checkpoints": "what is recorded in MLflow",
    "tracking.log_datasets": "what is recorded in MLflow",
    "tracking.system_metrics": "what is recorded in MLflow",
    "tracking.system_metrics_interval_s": "what is recorded in MLflow",
}
IGNORED = ("output_dir", "preset")


class ResumeConfigError(ConfigError):
    """A resume whose config changes what the run computes."""


@dataclass
class ResumeCheck:
    """The outcome of comparing a config with its checkpoint's: ``safe`` changes {field: (old, new)} and the config
    version the run continues with (the checkpoint's, plus one when there are safe changes)."""

    safe: dict[str, tuple[str, str]] = field(default_factory=dict)
    version: int = 1

    def params(self, from_step: int) -> dict[str, Any]:
        """The MLflow params of this config version, nested: ``config_v<N>.<field>`` -> the new value, and
        ``config_v<N>.from_step``, the first step that ran with it."""
        version: dict[str, Any] = {"from_step": str(from_step)}
        for name, (_, new) in self.safe.items():
            *sections, leaf = name.split(".")
            node = version
            for s in sections:
                node = node.setdefault(s, {})
            node[leaf] = new
        return {f"config_v{self.version}": version}


def config_diff(saved: dict[str, Any], config: RunConfig) -> dict[str, tuple[str, str]]:
    """Changed fields {dotted name: (saved value, new value)} as strings; a field only one side has is ``<unset>``.
    A field added since the checkpoint was written (a new section, e.g. ``trainer`` or ``model.lora``) is no change
    while it keeps its default: the old run computed what the default computes."""
    old = flatten_params(saved)
    new = flatten_params(config.model_dump(mode="json"))
    default = flatten_params(RunConfig.model_construct().model_dump(mode="json", warnings=False))
    return {
        k: (old.get(k, "<unset>"), new.get(k, "<unset>"))
        for k in sorted(set(old) | set(new))
        if k not in IGNORED and old.get(k) != new.get(k) and not (k not in old and new.get(k) == default.get(k))
    }


def check_resume(saved: dict[str, Any] | None, config: RunConfig, where: str, version: int = 1) -> ResumeCheck:
    """Compare ``config`` with the checkpoint's ``saved`` config; raise ``ResumeConfigError`` on a breaking change.

    ``where`` names the checkpoint in the message; ``version`` is its config version. A checkpoint without a saved
    config (written before configs were recorded) is accepted as it is.
    """
    if saved is None:
        return ResumeCheck(version=version)
    diff = config_diff(saved, config)
    breaking = {k: v for k, v in diff.items() if k not in SAFE_ON_RESUME}
    if breaking:
        changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in breaking.items())
        sets = " ".join(f"--set {k}={old}" for k, (old, _) in breaking.items() if old != "<unset>")
        raise ResumeConfigError(
            f"{where} was trained with a different config, and these changes would make the resumed run a different "
            f"run: {changes}. Resume with the checkpoint's values ({sets or 'the preset and overrides it used'}), or "
            f"start a new run in another --output-dir. Safe to change on resume: {', '.join(SAFE_ON_RESUME)}."
        )
    return ResumeCheck(safe=diff, version=version + 1 if diff else version)


def check_resume_dir(config: RunConfig, ckpt: Path | None = None) -> ResumeCheck:
    """``check_resume`` against checkpoint ``ckpt``, by default the latest of ``config.output_dir``, if any."""
    ckpt = ckpt or latest_checkpoint(Path(config.output_dir) / "checkpoints")
    if ckpt is None:
        return ResumeCheck()
    extra = json.loads((ckpt / MANIFEST).read_text()).get("extra", {})
    return check_resume(extra.get("config"), config, str(ckpt), extra.get("config_version", 1))
