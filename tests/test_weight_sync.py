"""Weight sync without vLLM: the shared-memory block's layout and round trip, the probe check, the one-step-off
rollout that a checkpoint carries, and the config rule of one-step-off (``steer.rollout.weight_sync``,
``steer.rollout.pending``). The real worker's side is in tests/test_rollout_vllm.py."""

from __future__ import annotations

import copy
from multiprocessing import shared_memory

import pytest
import torch
from policies import in_memory_policy

from steer.checkpoint import load_checkpoint_tensors, save_checkpoint, verify_checkpoint
from steer.config import ConfigError, load_config
from steer.rollout.base import RolloutBatch
from steer.rollout.pending import rollout_from_tensors, rollout_to_tensors
from steer.rollout.weight_sync import (
    ALIGN,
    SharedWeights,
    WeightSyncError,
    check_probe,
    layout,
    probe_max_abs_diff,
    probe_token_ids,
    read_from,
    sync_tensors,
    trainer_probe_logp,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def small_policy():
    return in_memory_policy()


def test_layout_aligns_every_tensor_and_packs_them_without_overlap():
    tensors = {
        "a": torch.ones(3),
        "b": torch.zeros(2, 5, dtype=torch.bfloat16),
        "c": torch.arange(4),
        "d": torch.ones(0),
    }
    manifest, size = layout(tensors)
    assert [e["offset"] for e in manifest] == [0, ALIGN, 2 * ALIGN, 3 * ALIGN]  # 12, 20, 32 bytes: one line each
    assert [e["nbytes"] for e in manifest] == [12, 20, 32, 0] and size == 3 * ALIGN
    assert [e["dtype"] for e in manifest] == ["float32", "bfloat16", "int64", "float32"]
    with pytest.raises(TypeError, match="x: dtype torch.complex64"):
        layout({"x": torch.zeros(2, dtype=torch.complex64)})


def test_a_second_process_view_of_the_block_reads_the_trainers_tensors_bit_for_bit(small_policy):
    """Attach by name, as the worker does, and read zero-copy views: every tensor equal, tied ones once, cast."""
    model, _ = small_policy
    shared = SharedWeights()
    try:
        for dtype in (None, torch.bfloat16):
            tensors = sync_tensors(model, dtype)
            assert "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors  # tied: once
            name, manifest = shared.pack(tensors)
            other = shared_memory.SharedMemory(name=name)  # a second mapping of the same block
            views = read_from(other.buf, manifest)
            assert list(views) == list(tensors)
            assert all(torch.equal(views[k], tensors[k]) and views[k].dtype == tensors[k].dtype for k in tensors)
            del views
            other.close()
        block = shared.shm.name
        shared.pack(sync_tensors(model))  # the same size again: the block is reused
        assert shared.shm.name == block
        shared.pack({"big": torch.zeros(shared.shm.size)})  # larger: a new block, the old one removed
        assert shared.shm.name != block
        with pytest.raises(FileNotFoundError):
            shared_memory.SharedMemory(name=block)
    finally:
        name = shared.shm.name
        shared.close()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)


def test_probe_is_fixed_and_its_log_probs_are_the_models(small_policy):
    model, _ = small_policy
    ids = probe_token_ids(model.config.vocab_size, 16)
    assert ids == probe_token_ids(model.config.vocab_size, 16) != probe_token_ids(model.config.vocab_size, 16, seed=1)
    assert len(ids) == 16 and all(0 <= i < model.config.vocab_size for i in ids)
    logp = trainer_probe_logp(model, ids)  # (15,)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (16, V)
    by_hand = [float(logits[i].log_softmax(-1)[ids[i + 1]]) for i in range(15)]
    assert logp.shape == (15,) and logp.tolist() == pytest.approx(by_hand, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        probe_token_ids(10, 1)


def test_the_probe_check_passes_the_same_weights_and_catches_a_corrupted_tensor(small_policy):
    """A model rebuilt from the shared block passes; one wrong tensor in the block fails, naming the setting."""
    model, _ = small_policy
    ids = probe_token_ids(model.config.vocab_size, 32)
    expected = trainer_probe_logp(model, ids)
    shared = SharedWeights()
    try:
        name, manifest = shared.pack(sync_tensors(model))
        copy_model = copy.deepcopy(model)
        copy_model.load_state_dict(read_from(shared.shm.buf, manifest), strict=False)
        metrics = check_probe(trainer_probe_logp(copy_model, ids), expected, tolerance=1e-6)
        assert metrics["rollout/sync_probe_max_abs_diff"] == 0.0
        views = read_from(shared.shm.buf, manifest)
        wrong = views["model.layers.1.mlp.down_proj.weight"]  # a mis-named tensor: layer 1's under layer 0
        views["model.layers.0.mlp.down_proj.weight"].copy_(wrong)
        copy_model.load_state_dict(views, strict=False)
        del views, wrong
        with pytest.raises(WeightSyncError, match=r"rollout.sync_probe_tolerance=0.001"):
            check_probe(trainer_probe_logp(copy_model, ids), expected, tolerance=1e-3)
    finally:
        shared.close()
    nan = expected.clone()
    nan[3] = float("nan")
    assert probe_max_abs_diff(nan, expected) == float("inf")  # a NaN weight fails the check
    with pytest.raises(ValueError, match="shapes"):
        probe_max_abs_diff(expected[:-1], expected)


def _rollout() -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (6, 4), generator=g)  # (N, T), B = 3, G = 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]] * 2, dtype=torch.float32)
    return RolloutBatch(
        prompt_ids=[[1, 2, 3], [4], [5, 6]],
        group_index=torch.arange(3).repeat_interleave(2),
        sample_index=torch.arange(2).repeat(3),
        response_ids=ids,
        response_mask=mask,
        response_text=["12", "é\n", "", "7 + 8", "x", "∑"],
        truncated=torch.tensor([False, True, False, False, True, False]),
        sampling_logp=-torch.rand(6, 4, generator=g) * mask,
    )


def test_a_pending_rollout_round_trips_through_a_checkpoint_exactly(small_policy, tmp_path):
    model, tokenizer = small_policy
    batch = _rollout()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(tmp_path, 4, model, tokenizer, optimizer, tensors={"pending": rollout_to_tensors(batch, 4)})
    assert "tensors/pending.safetensors" in verify_checkpoint(path)["files"]  # hashed like the rest
    step, back = rollout_from_tensors(load_checkpoint_tensors(path, "pending"))
    assert step == 4 and back.prompt_ids == batch.prompt_ids and back.response_text == batch.response_text
    for field in ("group_index", "sample_index", "response_ids", "response_mask", "truncated", "sampling_logp"):
        assert torch.equal(getattr(back, field), getattr(batch, field)), field
        assert getattr(back, field).dtype == getattr(batch, field).dtype, field
    assert load_checkpoint_tensors(path, "other") is None
    batch.sampling_logp = None
    assert rollout_from_tensors(rollout_to_tensors(batch, 0))[1].sampling_logp is None


def test_one_step_off_needs_an_engine_with_its_own_weights():
    with pytest.raises(ConfigError, match=r"rollout: .*one_step_off=true needs .*rollout.backend=vllm"):
        load_config("tiny", {"rollout.one_step_off": True})
    assert load_config("tiny", {"rollout.one_step_off": True, "rollout.backend": "vllm"}).rollout.one_step_off
    with pytest.raises(ConfigError, match="rollout.weight_sync: 'disk' is not one of: 'memory', 'file'"):
        load_config("tiny", {"rollout.weight_sync": "disk"})


def test_one_step_off_refuses_dynamic_sampling():
    over = {"rollout.one_step_off": True, "rollout.backend": "vllm", "dynamic_sampling.enabled": True}
    with pytest.raises(ConfigError, match=r"one_step_off=true with dynamic_sampling.enabled=true"):
        load_config("tiny", over)
