"""The embedded tiny policy: tokenizer, demonstrations, content-keyed cache, HF-format round trip, warm-start."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import steer.models.tiny as tiny  # noqa: E402
from steer.data.embedded import ArithmeticTask  # noqa: E402
from steer.models.tiny import (  # noqa: E402
    TinyPolicySpec,
    boxed_answer,
    build_char_tokenizer,
    encode_demonstrations,
    ensure_tiny_policy,
    format_tiny_prompt,
)

pytestmark = pytest.mark.unit

SMALL = TinyPolicySpec(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    sft_examples=64,
    sft_steps=3,
    sft_batch_size=8,
    eval_problems=8,
)


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    spec = TinyPolicySpec()
    tok = build_char_tokenizer(spec.alphabet, spec.words)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Calculate 3 + 10 - 7.\n\\boxed{6}"
    ids = loaded(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    assert loaded.convert_ids_to_tokens(ids)[:2] == ["Calculate ", "3"] and "\\boxed{" in loaded.convert_ids_to_tokens(
        ids
    )
    assert loaded.decode(ids) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2, 3)
    assert loaded.decode(ids + [loaded.eos_token_id], skip_special_tokens=True) == text
    assert format_tiny_prompt(loaded, "Calculate 1 + 2.") == "Calculate 1 + 2.\n"
    assert loaded("é")["input_ids"] == [loaded.unk_token_id]


def test_boxed_answer():
    assert boxed_answer("\\boxed{-4}") == "-4"
    assert boxed_answer("x \\boxed{1} then \\boxed{ 12 }") == "12"
    assert boxed_answer("\\boxed{") is None and boxed_answer("12") is None


def test_demonstrations_mask_the_response_and_eos():
    tok = build_char_tokenizer(SMALL.alphabet, SMALL.words)
    problems = [
        {"id": "a", "prompt": "Calculate 1 + 2.", "answer": "3", "task": "t"},
        {"id": "b", "prompt": "Calculate 10 - 10 + 0.", "answer": "0", "task": "t"},
    ]
    ids, mask = encode_demonstrations(tok, problems)  # (2, S)
    assert ids.shape == mask.shape
    first = ids[0][mask[0] == 1].tolist()
    assert tok.decode(first) == "\\boxed{3}<eos>"
    n_prompt = len(tok("Calculate 1 + 2.\n")["input_ids"])
    assert mask[0, :n_prompt].eq(0).all() and int(mask[0].sum()) == 4  # \boxed{ 3 } <eos>
    assert ids[0, n_prompt + 4 :].eq(tok.pad_token_id).all()


def test_spec_key_is_a_content_key():
    assert TinyPolicySpec().key() == TinyPolicySpec().key()
    assert TinyPolicySpec(sft_steps=10).key() != TinyPolicySpec().key()
    assert TinyPolicySpec(task=ArithmeticTask(max_terms=4)).key() != TinyPolicySpec().key()


def test_ensure_builds_once_and_loads_with_auto_classes(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_tiny_policy(tmp_path, SMALL, num_threads=1)
    assert path.name == f"tiny-{SMALL.key()}"
    metrics = json.loads((path / "warm_start.json").read_text())
    assert 0.0 <= metrics["heldout_accuracy_t1"] <= 1.0 and metrics["heldout_problems"] == 8
    assert metrics["key"] == SMALL.key() and metrics["num_parameters"] > 0
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left behind

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt a cached policy")

    monkeypatch.setattr(tiny, "build_tiny_policy", boom)
    assert ensure_tiny_policy(tmp_path, SMALL) == path

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 1
    assert model.config.eos_token_id == tok.eos_token_id and model.config.vocab_size == len(tok)
    text = "Calculate 1 + 2.\n\\boxed{3}"
    built = build_char_tokenizer(SMALL.alphabet, SMALL.words)
    assert tok(text)["input_ids"] == built(text)["input_ids"] and tok.decode(tok(text)["input_ids"]) == text
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_default_warm_start_leaves_room_for_rl(tmp_path):
    """The default spec: built in about a minute, held-out accuracy at temperature 1 within 20-60%."""
    path = ensure_tiny_policy(tmp_path)
    metrics = json.loads((path / "warm_start.json").read_text())
    assert 0.2 <= metrics["heldout_accuracy_t1"] <= 0.6, metrics
    assert metrics["heldout_accuracy_greedy"] >= metrics["heldout_accuracy_t1"] - 0.05, metrics
    assert metrics["build_seconds"] < 180, metrics
