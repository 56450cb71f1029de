"""One-step-off rollouts with the CPU vLLM worker, for real: the training flow on the embedded tiny policy, synchronous
and one-step-off, each run to the end and resumed from a middle checkpoint (skipped without ``.venv-vllm``;
``make test-vllm``). Each run starts a vLLM worker (15-80 s on 2 shared cores), so the module is ``slow``."""

from __future__ import annotations

import shutil

import pytest
from test_rollout_vllm import needs_vllm
from test_train_flow import SMALL, metric_history, small_config

from flows.train import train
from steer.checkpoint import TENSORS, checkpoint_path
from steer.rollout_store import read_rollouts

pytestmark = [pytest.mark.slow, needs_vllm]


def _run_and_resume(out, one_step_off: bool):
    """Run 3 steps (checkpoints after each), roll the folder back to the checkpoint after step 1 (what a kill
    between the checkpoints of steps 1 and 2 leaves, plus the later files the resume must redo), and resume."""
    config = small_config(
        out,
        rollout={**SMALL["rollout"], "backend": "vllm", "one_step_off": one_step_off},
        eval={**SMALL["eval"], "every": 0},
        keep_checkpoints=3,
        # the embedded tiny policy: vLLM's CPU attention has no kernel for the test-size policy's head_dim of 16
        model={**SMALL["model"], "name_or_path": "tiny"},
    )
    first = train(config)
    rollouts = read_rollouts(out / "rollouts").drop(["run_id"])
    losses = metric_history(out, "actor/pg_loss")
    pending = checkpoint_path(out / "checkpoints", 1) / TENSORS / "pending_rollout.safetensors"
    assert pending.exists() == one_step_off  # the rollout of step 1, sampled ahead with the step-0 weights
    assert not (checkpoint_path(out / "checkpoints", 3) / TENSORS).exists()  # nothing ahead of the last step
    for step in (2, 3):
        shutil.rmtree(checkpoint_path(out / "checkpoints", step))
    second = train(config)
    assert (first["resumed_from"], second["resumed_from"]) == (0, 1)
    return (
        first,
        rollouts,
        losses,
        read_rollouts(out / "rollouts").drop(["run_id"]),
        metric_history(out, "actor/pg_loss"),
    )


def test_synchronous_and_one_step_off_runs_complete_and_resume_exactly(prefect_harness, tmp_path):
    results = {}
    for mode in (False, True):
        summary, rollouts, losses, resumed, resumed_losses = _run_and_resume(tmp_path / f"off-{mode}", mode)
        assert rollouts.num_rows == resumed.num_rows == 3 * 16
        assert resumed.equals(rollouts), f"one_step_off={mode}: the resumed run sampled other rollouts"
        assert resumed_losses == losses, f"one_step_off={mode}: the resumed run trained differently"
        results[mode] = rollouts, metric_history(tmp_path / f"off-{mode}", "rollout/logp_mismatch")
    (sync, sync_mismatch), (off, off_mismatch) = results[False], results[True]
    step = sync.column("step").to_pylist()
    # rollout 0 is sampled with the initial weights in both modes, with the same seed: the same samples
    first = [i for i, s in enumerate(step) if s == 0]
    assert sync.take(first).equals(off.take(first))
    print(f"\nlogp mismatch per step: synchronous {sync_mismatch}, one-step-off {off_mismatch}")
