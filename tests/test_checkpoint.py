"""Checkpoints: a save/mutate/load cycle restores weights, optimizer and every RNG; incomplete folders are skipped;
pruning keeps the newest k; the folder loads with from_pretrained."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config  # noqa: E402

from steer.checkpoint import (  # noqa: E402
    MANIFEST,
    CheckpointDamaged,
    checkpoint_path,
    latest_checkpoint,
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

pytestmark = pytest.mark.unit


def tiny_model(tie: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        tie_word_embeddings=tie,
    )
    return AutoModelForCausalLM.from_config(config)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *"0123456789+="])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, 16, (2, 5))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def draws(generators: dict[str, torch.Generator]) -> list:
    """One draw from every RNG a checkpoint restores (NumPy's global state is saved, hence the legacy call)."""
    numpy_draw = float(np.random.rand())  # noqa: NPY002
    return [
        random.random(),
        numpy_draw,
        torch.rand(3).tolist(),
        *(torch.rand(2, generator=g).tolist() for g in generators.values()),
    ]


@pytest.mark.parametrize("tie", [True, False])
def test_save_mutate_load_restores_everything(tmp_path, tie):
    model, tokenizer = tiny_model(tie), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generators = {"sampler": torch.Generator().manual_seed(1), "shuffle": torch.Generator().manual_seed(2)}
    train_step(model, optimizer)
    path = save_checkpoint(tmp_path, 3, model, tokenizer, optimizer, generators, {"data_position": 96})
    assert path == checkpoint_path(tmp_path, 3) and path.name == "step-000003"
    params = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(optimizer.state_dict())  # state_dict() shares the live tensors
    expected = draws(generators)

    train_step(model, optimizer)  # mutate weights, optimizer moments and every RNG
    assert not torch.equal(model.state_dict()["model.embed_tokens.weight"], params["model.embed_tokens.weight"])

    step, extra = load_checkpoint(path, model, optimizer, generators)
    assert (step, extra) == (3, {"data_position": 96})
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, params[k], rtol=0, atol=0)
    if tie:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    restored = optimizer.state_dict()
    for i, s in opt_state["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(restored["state"][i][name], s[name], rtol=0, atol=0)
    assert draws(generators) == expected

    reloaded = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("7") == tokenizer.convert_tokens_to_ids("7")


def test_resume_then_train_matches_unbroken_run(tmp_path):
    """Two steps straight equal one step, save, a fresh process-like restart from the checkpoint, one step."""
    model, tokenizer = tiny_model(seed=5), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(11)
    train_step(model, optimizer)
    save_checkpoint(tmp_path, 1, model, tokenizer, optimizer)
    train_step(model, optimizer)
    unbroken = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(999)  # a new process: other RNG state, freshly initialised model and optimizer
    model2 = tiny_model(seed=6)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    step, _ = load_checkpoint(latest_checkpoint(tmp_path), model2, optimizer2)
    train_step(model2, optimizer2)
    assert step == 1
    for k, v in model2.state_dict().items():
        torch.testing.assert_close(v, unbroken[k], rtol=0, atol=0)


def test_incomplete_checkpoints_are_skipped_and_pruning_keeps_k(tmp_path):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, tokenizer, optimizer, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]

    crashed = checkpoint_path(tmp_path, 9)  # e.g. copied by hand and interrupted: no manifest
    shutil.copytree(checkpoint_path(tmp_path, 4), crashed)
    (crashed / MANIFEST).unlink()
    (tmp_path / ".tmp-step-000010-abc").mkdir()  # a save killed before its rename
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(crashed, model, optimizer)

    save_checkpoint(tmp_path, 5, model, tokenizer, optimizer, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005", "step-000009"]  # unknown folder kept
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_resaving_a_step_replaces_it(tmp_path):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 2, model, tokenizer, optimizer, extra={"v": 1})
    save_checkpoint(tmp_path, 2, model, tokenizer, optimizer, extra={"v": 2})
    assert load_checkpoint(checkpoint_path(tmp_path, 2), model, optimizer) == (2, {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["step-000002"]


def test_errors_name_the_problem(tmp_path):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, 0, model, tokenizer, optimizer, extra={"x": object()})
    with pytest.raises(ValueError, match="keep_last=0"):
        save_checkpoint(tmp_path, 0, model, tokenizer, optimizer, keep_last=0)
    assert list(tmp_path.iterdir()) == []

    path = save_checkpoint(tmp_path, 0, model, tokenizer, optimizer, {"g": torch.Generator()})
    with pytest.raises(ValueError, match=r"generators \['g'\], but \[\] were passed"):
        load_checkpoint(path, model, optimizer)
    with pytest.raises(ValueError, match="does not match the model"):
        other = tiny_model(tie=False)
        load_checkpoint(path, other, torch.optim.AdamW(other.parameters()), {"g": torch.Generator()})
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["step"] == 0 and "optimizer.pt" in manifest["files"]
    with open(path / "optimizer.pt", "ab") as f:
        f.write(b"torn")
    with pytest.raises(ValueError, match="optimizer.pt is missing or has changed size"):
        load_checkpoint(path, model, optimizer, {"g": torch.Generator()})


def _flip_bytes(path, offset_frac=0.5, n=64):
    """Overwrite ``n`` bytes in the middle of ``path`` with their complement: the same size, other content."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_frac)
    data[at : at + n] = bytes(255 - b for b in data[at : at + n])
    path.write_bytes(bytes(data))


def test_a_same_size_corruption_is_detected_and_the_previous_checkpoint_is_used(tmp_path, caplog):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2):
        train_step(model, optimizer)
        save_checkpoint(tmp_path, step, model, tokenizer, optimizer)
    weights = checkpoint_path(tmp_path, 2) / "model.safetensors"
    size = weights.stat().st_size
    _flip_bytes(weights)
    assert weights.stat().st_size == size
    with pytest.raises(CheckpointDamaged, match=r"model.safetensors has changed since the save \(its SHA-256"):
        load_checkpoint(checkpoint_path(tmp_path, 2), model, optimizer)
    with caplog.at_level("WARNING", logger="steer.checkpoint"):
        assert latest_good_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)
    assert "step-000002/model.safetensors has changed" in caplog.text and "previous checkpoint" in caplog.text
    weights.write_bytes(weights.read_bytes()[: size // 2])  # truncated: the same fallback, no SafetensorError
    assert latest_good_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)


def test_an_unreadable_file_is_damaged_and_unsafe_loading_is_never_suggested(tmp_path):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 1, model, tokenizer, optimizer)
    _flip_bytes(path / "optimizer.pt", offset_frac=0.0, n=4096)  # the pickle itself, past the zip header
    with pytest.raises(CheckpointDamaged) as e:
        load_checkpoint(path, model, optimizer, verify=False)  # past the hashes: torch itself fails to read it
    assert "optimizer.pt cannot be read safely" in str(e.value)
    assert "weights_only" not in str(e.value) and e.value.__context__ is None and e.value.__cause__ is None
    _flip_bytes(path / "model.safetensors", offset_frac=0.0, n=16)  # a torn safetensors header
    with pytest.raises(CheckpointDamaged, match="model.safetensors cannot be read"):
        load_checkpoint(path, model, optimizer, verify=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_and_device_generator_are_restored(tmp_path):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    model.cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    generators = {"sampler": torch.Generator(device="cuda").manual_seed(4)}
    path = save_checkpoint(tmp_path, 0, model, tokenizer, optimizer, generators)
    expected = [
        torch.rand(3, device="cuda").tolist(),
        torch.rand(3, device="cuda", generator=generators["sampler"]).tolist(),
    ]
    torch.rand(5, device="cuda")
    load_checkpoint(path, model, optimizer, generators)
    assert [
        torch.rand(3, device="cuda").tolist(),
        torch.rand(3, device="cuda", generator=generators["sampler"]).tolist(),
    ] == expected
    assert model.lm_head.weight.device.type == "cuda"


LORA = dict(r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj", "v_proj"])


def _lora(base_seed: int = 5):
    from steer.lora import apply_lora

    model = apply_lora(tiny_model(seed=base_seed), **LORA, seed=3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-2)


def test_a_lora_checkpoint_resumes_on_its_base_exactly_and_refuses_another_base(tmp_path):
    """A LoRA checkpoint holds the merged weights (a plain model) and the adapters; base + adapters resume to the
    unbroken run bit for bit, and a base that is not the run's is refused by name."""
    from steer.checkpoint import LORA_ADAPTERS, load_checkpoint_tensors
    from steer.lora import sampler_state_dict

    model, optimizer = _lora()
    torch.manual_seed(11)
    train_step(model, optimizer)
    path = save_checkpoint(tmp_path, 1, model, tiny_tokenizer(), optimizer)
    merged_then = {k: v.clone() for k, v in sampler_state_dict(model).items()}
    train_step(model, optimizer)
    unbroken = {k: v.clone() for k, v in model.state_dict().items()}

    plain = AutoModelForCausalLM.from_pretrained(path)  # no peft needed to read it
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, merged_then[k], rtol=0, atol=0)
    assert set(load_checkpoint_tensors(path, LORA_ADAPTERS)) == {k for k in unbroken if ".lora_" in k}

    torch.manual_seed(999)
    resumed, optimizer2 = _lora()  # the same base, fresh adapters
    assert load_checkpoint(path, resumed, optimizer2)[0] == 1
    train_step(resumed, optimizer2)
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, unbroken[k], rtol=0, atol=0)

    other, optimizer3 = _lora(base_seed=6)
    with pytest.raises(ValueError, match="not the one this LoRA run was trained on"):
        load_checkpoint(path, other, optimizer3)
