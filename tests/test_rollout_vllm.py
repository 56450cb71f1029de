"""The ``vllm`` rollout backend: a vLLM worker in ``.venv-vllm`` serving the embedded tiny policy on CPU.

The real-worker tests are slow (each worker start loads vLLM, ~15 s on 2 cores) and skipped when ``.venv-vllm`` is
missing (``make vllm-venv`` builds it); ``make test-vllm`` runs them. The protocol helpers, the weight writer and the
error path of a worker that cannot import vllm run in the default suite.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from policies import in_memory_policy  # noqa: E402

from steer.models.loading import load_policy, resolve_policy  # noqa: E402
from steer.rollout import ROLLOUT_BACKENDS, RolloutEngine, make_rollout_engine  # noqa: E402
from steer.rollout.hf import HFRolloutEngine  # noqa: E402
from steer.rollout.vllm_client import ROOT, VLLMRolloutEngine, VLLMWorkerError, row_seed, write_weights  # noqa: E402
from steer.rollout.vllm_worker import recv_message, send_message  # noqa: E402
from steer.rollout.weight_sync import WeightSyncError, sync_tensors  # noqa: E402
from steer.runtime import cache_dir  # noqa: E402

pytestmark = pytest.mark.unit

VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
needs_vllm = pytest.mark.skipif(not VENV_PYTHON.exists(), reason=f"no vLLM venv at {VENV_PYTHON}: run `make vllm-venv`")
PROMPTS = ["Calculate 4 - 1.\n", "Calculate 37 + 58.\n", "9\n"]  # different lengths
MAX_NEW = 12


def _trainer_logp(model, prompt_ids: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """(k,) log_softmax(logits / temperature) of each response token under ``model``, one full forward."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + response])).logits[0]  # (P + k, V)
    logp = (logits[len(prompt_ids) - 1 : -1].float() / temperature).log_softmax(-1)  # (k, V)
    return logp.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def logp_mismatch(model, batch, temperature: float) -> tuple[float, float]:
    """Mean and max of |sampling_logp - trainer logp| over the valid tokens of ``batch``."""
    diffs = []
    for row in range(batch.response_ids.shape[0]):
        k = int(batch.response_lengths[row])
        response = batch.response_ids[row, :k].tolist()
        expected = _trainer_logp(model, batch.prompt_ids[int(batch.group_index[row])], response, temperature)
        diffs.append((batch.sampling_logp[row, :k] - expected).abs())
    d = torch.cat(diffs)
    return float(d.mean()), float(d.max())


# -- default suite: no worker -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_policy():
    return in_memory_policy()


def test_registered_lazily():
    assert "vllm" in ROLLOUT_BACKENDS


def test_framing_round_trip():
    a, b = socket.socketpair()
    with a, b:
        message = {"op": "generate", "token_ids": [[1, 2, 3], []], "logprobs": [[-0.5, -1e-7]], "text": "é\n"}
        send_message(a, message)
        send_message(a, {"op": "ping"})
        assert recv_message(b) == message and recv_message(b) == {"op": "ping"}
        a.close()
        assert recv_message(b) is None  # a closed peer reads as None


def test_row_seeds_are_stable_and_distinct():
    seeds = {row_seed(7, b, g) for b in range(8) for g in range(8)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert row_seed(7, 3, 2) == row_seed(7, 3, 2) != row_seed(8, 3, 2)


def test_write_weights_writes_tied_tensors_once_and_casts(small_policy, tmp_path):
    model, _ = small_policy
    assert model.config.tie_word_embeddings
    tensors = load_file(write_weights(model, tmp_path, torch.bfloat16))
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" not in tensors
    assert set(tensors) == set(model.state_dict()) - {"lm_head.weight"}
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    full = load_file(write_weights(model, tmp_path))  # overwrites atomically, no temp file left behind
    assert torch.equal(full["model.norm.weight"], model.model.norm.weight) and os.listdir(tmp_path) == [
        "model.safetensors"
    ]


def test_missing_venv_says_how_to_build_it():
    with pytest.raises(FileNotFoundError, match="make vllm-venv"):
        VLLMRolloutEngine(None, None, python="/nonexistent/.venv-vllm/bin/python")


def test_worker_without_vllm_fails_with_its_log(small_policy):
    """The main venv's python has no vllm: the start fails fast with the worker's traceback and the fix."""
    model, tokenizer = small_policy
    with pytest.raises(
        VLLMWorkerError, match="(?s)exited with code 1 while starting.*make vllm-venv.*No module named .vllm."
    ):
        VLLMRolloutEngine(model, tokenizer, python=sys.executable, startup_timeout=60)


# -- a real worker (slow) -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():
    return load_policy(resolve_policy("tiny", cache_dir()), dtype=torch.float32)


@pytest.fixture(scope="module")
def engine(policy):
    model, tokenizer = policy
    engine = make_rollout_engine("vllm", model=model, tokenizer=tokenizer)  # float32 by default
    yield engine
    engine.close()


def _generate(engine, **overrides):
    kwargs = dict(n_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, seed=0) | overrides
    return engine.generate(PROMPTS, **kwargs)


@pytest.mark.slow
@needs_vllm
def test_conventions_match_the_hf_backend(engine, policy):
    model, tokenizer = policy
    assert isinstance(engine, VLLMRolloutEngine) and isinstance(engine, RolloutEngine)
    batch, hf = _generate(engine), _generate(HFRolloutEngine(model, tokenizer))
    n, t = batch.response_ids.shape  # (N, T)
    assert n == len(PROMPTS) * 4 and t <= MAX_NEW
    assert batch.prompt_ids == hf.prompt_ids
    assert torch.equal(batch.group_index, hf.group_index) and torch.equal(batch.sample_index, hf.sample_index)
    for field in ("response_ids", "response_mask", "truncated", "sampling_logp"):
        assert getattr(batch, field).dtype == getattr(hf, field).dtype, field
    assert t == int(batch.response_lengths.max())  # T is the longest response
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for row in range(n):  # mask: a prefix of ones, EOS inside it; padding holds the pad id and log-prob 0
        k = int(batch.response_lengths[row])
        ids = batch.response_ids[row, :k].tolist()
        assert batch.response_mask[row, :k].eq(1).all() and batch.response_mask[row, k:].eq(0).all()
        assert batch.response_ids[row, k:].eq(pad).all() and batch.sampling_logp[row, k:].eq(0).all()
        assert batch.sampling_logp[row, :k].le(0).all()
        assert eos not in ids[:-1] and bool(batch.truncated[row]) == (ids[-1] != eos)
        assert not batch.truncated[row] or k == MAX_NEW
    assert batch.response_text == tokenizer.batch_decode(
        [r[: int(k)] for r, k in zip(batch.response_ids.tolist(), batch.response_lengths)], skip_special_tokens=True
    )


@pytest.mark.slow
@needs_vllm
def test_truncated_when_max_new_tokens_is_hit(engine, policy):
    batch = _generate(engine, max_new_tokens=3)
    eos = policy[1].eos_token_id
    assert batch.response_ids.shape[1] == 3 and batch.truncated.any()
    assert batch.truncated.tolist() == [
        eos not in r[: int(k)] for r, k in zip(batch.response_ids.tolist(), batch.response_lengths)
    ]


@pytest.mark.slow
@needs_vllm
def test_seeded_reproducibility(engine):
    a, b, c = _generate(engine), _generate(engine), _generate(engine, seed=1)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.sampling_logp, b.sampling_logp)
    assert not torch.equal(a.response_ids, c.response_ids)
    # each row has its own seed: prompt 0's samples do not depend on the rest of the batch
    alone = engine.generate(PROMPTS[:1], n_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, seed=0)
    assert alone.response_text == a.response_text[:4]


@pytest.mark.slow
@needs_vllm
def test_greedy_matches_hf(engine, policy):
    model, tokenizer = policy
    greedy = _generate(engine, n_samples=1, temperature=0.0)
    hf = _generate(HFRolloutEngine(model, tokenizer), n_samples=1, temperature=0.0)
    assert greedy.response_text == hf.response_text and torch.equal(greedy.response_ids, hf.response_ids)
    torch.testing.assert_close(greedy.sampling_logp, hf.sampling_logp, atol=1e-4, rtol=0)  # temperature 1


@pytest.mark.slow
@needs_vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logp_matches_the_trainer(engine, policy, temperature):
    """The train/inference mismatch mean |logp_vllm - logp_trainer| on the sampled tokens, float32 on both sides."""
    batch = _generate(engine, n_samples=8, temperature=temperature)
    mean, worst = logp_mismatch(policy[0], batch, temperature)
    print(f"\nvllm float32 logp mismatch at T={temperature}: mean {mean:.2e}, max {worst:.2e}")
    assert mean < 1e-5 and worst < 1e-4


@pytest.mark.slow
@needs_vllm
def test_update_weights_follows_the_trainer(engine, policy):
    """After update_weights(perturbed), vLLM samples from the perturbed model: its log-probs match the perturbed
    model's and not the original's; pushing the original back restores the original samples exactly."""
    model, _ = policy
    before = _generate(engine, n_samples=8)
    perturbed = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.1 * p.std() * torch.randn(p.shape, generator=g))
    try:
        engine.update_weights(perturbed)
        after = _generate(engine, n_samples=8)
        print(f"\nweight sync {engine.timings['timing/vllm_weight_sync'] * 1e3:.0f} ms")
        new_mean, new_max = logp_mismatch(perturbed, after, 1.0)
        old_mean, _ = logp_mismatch(model, after, 1.0)
        print(f"after update: mismatch vs perturbed {new_mean:.2e} (max {new_max:.2e}), vs original {old_mean:.2e}")
        assert new_mean < 1e-5 and new_max < 1e-4 and old_mean > 1e-2
        assert not torch.equal(after.response_ids, before.response_ids)
    finally:
        engine.update_weights(model)
    again = _generate(engine, n_samples=8)
    assert torch.equal(again.response_ids, before.response_ids)
    torch.testing.assert_close(again.sampling_logp, before.sampling_logp, atol=1e-6, rtol=0)


@pytest.mark.slow
@needs_vllm
def test_worker_death_restart_and_close(policy):
    """A folder path serves as it is; a killed worker raises once, the next call starts a fresh worker on the latest
    weights; close() ends the worker's process group and removes the temp dir."""
    model, _ = policy
    folder = Path(resolve_policy("tiny", cache_dir()))
    written = (folder / "model.safetensors").stat().st_mtime_ns
    engine = VLLMRolloutEngine(folder, weight_sync="file")
    try:
        first = _generate(engine)
        engine.update_weights(folder)  # a folder is loaded as it is
        engine.update_weights(model)  # a model is written to the engine's own folder, never the served one
        assert engine.model_dir == engine.work_dir / "model"
        assert (folder / "model.safetensors").stat().st_mtime_ns == written
        os.killpg(engine.worker_pid, signal.SIGKILL)
        with pytest.raises(VLLMWorkerError, match="closed the connection|lost the vLLM worker"):
            _generate(engine)
        assert engine.worker_pid is None
        assert torch.equal(_generate(engine).response_ids, first.response_ids)  # restarted, same samples
        pid, work_dir = engine.worker_pid, engine.work_dir
    finally:
        engine.close()
    assert not work_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _perturbed(model, scale: float = 0.1):
    perturbed = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return perturbed


@pytest.mark.slow
@needs_vllm
def test_memory_sync_passes_the_probe_check_and_a_corrupted_sync_is_caught(engine, policy):
    """After an in-memory sync the engine's probe log-probs equal the trainer's within the tolerance (and its samples
    follow the new weights); a sync with one wrong tensor fails the check; the file fallback loads the same bits."""
    model, _ = policy
    perturbed = _perturbed(model)
    assert engine.weight_sync == "memory" and engine.probe_tolerance == 1e-3
    try:
        engine.update_weights(perturbed)
        memory = dict(engine.sync_metrics)
        print(f"\nmemory sync: {memory}")
        assert memory["rollout/sync_probe_max_abs_diff"] < 1e-3
        mean, worst = logp_mismatch(perturbed, _generate(engine, n_samples=8), 1.0)
        assert mean < 1e-5 and worst < 1e-4
        tensors = sync_tensors(perturbed)  # a mis-named tensor: layer 1's MLP output under layer 0
        tensors["model.layers.0.mlp.down_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"].clone()
        engine.push_tensors(tensors)
        with pytest.raises(WeightSyncError, match=r"differ from the trainer's by up to .*sync_probe_tolerance"):
            engine.check_sync(perturbed)
        print(f"corrupted sync: max |diff| {probe_of(engine, perturbed):.3g}")
        engine.weight_sync = "file"
        engine.update_weights(perturbed)
        print(f"file sync: {engine.sync_metrics}")
        assert engine.sync_metrics["rollout/sync_probe_max_abs_diff"] == memory["rollout/sync_probe_max_abs_diff"]
    finally:
        engine.weight_sync = "memory"
        engine.update_weights(model)


def probe_of(engine, model) -> float:
    try:
        return engine.check_sync(model)["rollout/sync_probe_max_abs_diff"]
    except WeightSyncError as e:
        return float(str(e).split("by up to ")[1].split()[0])


@pytest.mark.slow
@needs_vllm
def test_a_restarted_worker_gets_the_latest_memory_synced_weights(policy):
    """The shared block is replayed on a fresh worker: after a kill, the samples are those of the synced weights."""
    model, tokenizer = policy
    engine = VLLMRolloutEngine(model, tokenizer)
    try:
        engine.update_weights(_perturbed(model))
        synced = _generate(engine)
        os.killpg(engine.worker_pid, signal.SIGKILL)
        with pytest.raises(VLLMWorkerError):
            _generate(engine)
        assert torch.equal(_generate(engine).response_ids, synced.response_ids)
    finally:
        engine.close()
