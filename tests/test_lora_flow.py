"""LoRA (``model.lora``) in the training flow, on the embedded default at test size: only the adapters train, a
checkpoint is a plain Hugging Face model with the adapters merged in (plus the adapters, to resume), a run trained on
two Ray ranks and resumed in one process equals an unbroken one-process run. (A resume on another base model is
refused: tests/test_checkpoint.py.)"""

import pytest
import torch
from test_distributed import _ray_processes
from test_distributed_flow import ALGO, MICRO, RAY, _same
from test_train_flow import metric_history, small_config
from transformers import AutoModelForCausalLM

from flows.train import train
from steer.checkpoint import LORA_ADAPTERS, checkpoint_path, load_checkpoint_tensors
from steer.models.loading import load_policy

pytestmark = pytest.mark.flow

LORA = {"r": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
COMPARED = ("actor/pg_loss", "actor/grad_norm", "reward/mean", "rollout/entropy")


def _config(out, steps, trainer=None, lora=LORA, **extra):
    model = {**small_config(out).model.model_dump(), "lora": lora}
    return small_config(
        out, steps=steps, eval={"every": 0, "max_new_tokens": 8}, trainer=trainer or {}, model=model, **MICRO, **ALGO,
        **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def unbroken(prefect_harness, small_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    train(_config(out, 3))
    return out


def test_a_lora_checkpoint_is_the_merged_model_and_only_adapted_weights_moved(unbroken, small_policy):
    base, _ = load_policy(small_policy, dtype=torch.float32, device="cpu")
    ckpt = checkpoint_path(unbroken / "checkpoints", 3)
    merged = AutoModelForCausalLM.from_pretrained(ckpt)  # a plain model: no peft needed to read it
    want, got = base.state_dict(), merged.state_dict()
    assert set(got) == set(want)
    moved = {k for k in want if not torch.equal(want[k], got[k])}
    assert moved and all(any(f".{m}." in k for m in LORA["target_modules"]) for k in moved), sorted(moved)[:6]
    adapters = load_checkpoint_tensors(ckpt, LORA_ADAPTERS)
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert any(v.abs().max() > 0 for k, v in adapters.items() if ".lora_B." in k)  # B left zero: nothing trained


def test_two_lora_ranks_then_one_process_equal_an_unbroken_lora_run(unbroken, tmp_path):
    out = tmp_path / "run"
    train(_config(out, 2, RAY))  # steps 0, 1 on two FSDP2 ranks with adapters
    assert not _ray_processes()
    train(_config(out, 3))  # resume the ranks' LoRA checkpoint in one process: step 2
    for key in COMPARED:
        _same(metric_history(out, key), metric_history(unbroken, key), range(3))
