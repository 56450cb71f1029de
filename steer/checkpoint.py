"""Training-state checkpoints that a killed run can resume from, and that load as a plain Hugging Face model.

``save_checkpoint(dir, step, ...)`` writes ``dir/step-000123/``:

- the model (``save_pretrained``: ``config.json``, ``*.safetensors``) and the tokenizer, so
  ``AutoModelForCausalLM.from_pretrained(dir / "step-000123")`` works on the folder;
- ``optimizer.pt``: the optimizer's ``state_dict``; or, from a run on trainer ranks (``shards=``), ``shards/``: each
  rank's shard of the weights and the AdamW state, written by the ranks themselves with ``torch.distributed.checkpoint``
  (no rank gathers the optimizer state), which reads back at any world size, in one process too;
- ``rng_state.pt``: the Python, NumPy (legacy global) and torch CPU/CUDA generator states, and the state of every
  ``torch.Generator`` passed by name (e.g. the sampler's and the shuffle's);
- ``tensors/<name>.safetensors``: named groups of tensors the caller passes (``tensors=``; e.g. the rollout a
  one-step-off run sampled ahead), read back with ``load_checkpoint_tensors``;
- with LoRA (a peft model), the model folder holds the merged weights (still a plain Hugging Face model) and
  ``tensors/lora_adapters.safetensors`` the adapters; a resume reads the base weights from the model source again,
  loads the adapters, and checks that base + adapters reproduce the saved merged weights;
- ``manifest.json``, written last: format version, step, the caller's ``extra`` (data-loader position, scheduler
  state: anything JSON-serialisable), the size and the SHA-256 of every file.

Everything is written to a hidden temp folder in ``dir``, fsynced, then renamed to its final name: a killed save
leaves only the temp folder, which ``latest_checkpoint`` ignores and the next pruning removes. A folder without a
readable manifest is treated as incomplete and skipped. ``load_checkpoint`` checks every file's size and hash before
it changes anything, and a file that still cannot be read raises ``CheckpointDamaged`` naming it (never torch's
advice to load with ``weights_only=False``, which would run the file's pickled code); ``latest_good_checkpoint``
skips damaged checkpoints with a warning, so a run resumes from the newest intact one. Files are read back with
``torch.load(weights_only=True)``. torch and transformers only: no Prefect, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steer.fsutil import fsync_path
from steer.lora import adapter_state, is_lora_model, sampler_state_dict

FORMAT_VERSION = 1
"""Bump when the folder layout changes; ``load_checkpoint`` refuses other versions."""

MANIFEST = "manifest.json"
TENSORS = "tensors"
"""Subfolder of the caller's tensor groups (not a model shard: ``load_checkpoint`` reads only top-level ones)."""
SHARDS = "shards"
"""Subfolder of the trainer ranks' ``torch.distributed.checkpoint`` shards (weights and optimizer state)."""
LORA_ADAPTERS = "lora_adapters"
"""The tensor group of a LoRA model's adapters (``steer.lora.adapter_state``)."""
_NAME = re.compile(r"^step-(\d+)$")
_SCRATCH_PREFIXES = (".tmp-step-", ".old-step-")
log = logging.getLogger(__name__)


class CheckpointDamaged(ValueError):
    """A checkpoint file is missing, has another size or hash than its manifest records, or cannot be read."""


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """``<directory>/step-000123``: six digits, zero-padded, so names sort by step."""
    return Path(directory) / f"step-{step:06d}"


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    keep_last: int | None = None,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    shards: Callable[[Path], None] | None = None,
) -> Path:
    """Save the training state after ``step`` atomically; returns ``<directory>/step-000123``.

    Args:
        generators: named ``torch.Generator`` objects whose states ``load_checkpoint`` restores.
        extra: JSON-serialisable state of the caller, returned by ``load_checkpoint`` (e.g. the data position).
        keep_last: then delete all but the newest ``keep_last`` complete checkpoints (None keeps all).
        tensors: named groups of CPU tensors, each written to ``tensors/<name>.safetensors`` (hashed like the rest).
        shards: the trainer ranks' writer (``steer.distributed.fsdp.save_sharded`` on every rank): called with the
            checkpoint's ``shards/`` folder, it writes the sharded weights and optimizer state there, in place of
            ``optimizer.pt`` (``optimizer`` is then not read). The folder must be reachable from every rank.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last} would delete the checkpoint just saved: use >= 1 or None")
    extra = dict(extra or {})
    try:
        json.dumps(extra)
    except TypeError as e:
        raise TypeError(f"extra must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from e
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-{final.name}-"))
    tensors = dict(tensors or {})
    if is_lora_model(model):
        tensors[LORA_ADAPTERS] = adapter_state(model)
    try:
        if is_lora_model(model):  # merged weights under the base names: loads as a plain Hugging Face model
            model.get_base_model().save_pretrained(tmp, state_dict=sampler_state_dict(model))
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if shards is not None:
            shards(tmp / SHARDS)
        else:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(_rng_state(generators or {}), tmp / "rng_state.pt")
        for name, group in tensors.items():
            (tmp / TENSORS).mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in group.items()}, str(tmp / TENSORS / f"{name}.safetensors"))
        paths = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in paths}
        sha256 = {str(p.relative_to(tmp)): _sha256(p) for p in paths}
        manifest = {"format_version": FORMAT_VERSION, "step": step, "extra": extra, "files": files, "sha256": sha256}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for p in tmp.rglob("*"):
            if p.is_file():
                fsync_path(p)
        fsync_path(tmp)
        if final.exists():  # a redone step: move the old one aside first, a folder cannot be renamed over
            old = directory / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(directory)
    if keep_last is not None:
        prune_checkpoints(directory, keep_last)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (with a readable manifest) in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        if (m := _NAME.match(p.name)) and _read_manifest(p) is not None:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file of the checkpoint at ``path`` against its manifest (size, then SHA-256 where recorded);
    returns the manifest. Raises ``CheckpointDamaged`` naming the first bad file, ``FileNotFoundError`` without a
    readable manifest."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path} has no readable {MANIFEST}: it is not a complete checkpoint")
    hashes = manifest.get("sha256", {})  # checkpoints written before hashes were recorded: sizes only
    for name, size in manifest["files"].items():
        if not (path / name).is_file() or (path / name).stat().st_size != size:
            raise CheckpointDamaged(
                f"{path / name} is missing or has changed size since the save: the checkpoint is damaged"
            )
        if name in hashes and _sha256(path / name) != hashes[name]:
            raise CheckpointDamaged(
                f"{path / name} has changed since the save (its SHA-256 differs): the checkpoint is damaged"
            )
    return manifest


def latest_good_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint whose files verify (``verify_checkpoint``), or None; each newer damaged one is
    skipped with a warning that names it. Its step is redone by a resumed run, which then saves it again whole."""
    for path in reversed(list_checkpoints(directory)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointDamaged as e:
            log.warning(f"{e}; resuming from the previous checkpoint instead")
    return None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, and scratch folders of interrupted saves.

    Folders without a manifest are left alone (they are not known to be ours). Returns the deleted checkpoints.
    """
    directory = Path(directory)
    doomed = list_checkpoints(directory)[:-keep_last]
    for p in doomed:
        shutil.rmtree(p)
    for p in directory.iterdir():
        if p.is_dir() and p.name.startswith(_SCRATCH_PREFIXES):
            shutil.rmtree(p, ignore_errors=True)
    return doomed


def load_checkpoint(
    path: str | os.PathLike,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator] | None = None,
    *,
    verify: bool = True,
    load_optimizer: bool = True,
) -> tuple[int, dict[str, Any]]:
    """Restore model weights, optimizer state and all RNG states in place; returns ``(step, extra)``.

    The optimizer state comes from ``optimizer.pt`` or, for a checkpoint of trainer ranks, from its shards (resharded
    onto this one process); ``load_optimizer=False`` leaves it to the caller (ranks that read ``sharded_path``).

    For a LoRA ``model`` (built on the run's base weights), the adapters are loaded, and base + adapters must give
    the saved merged weights (to float rounding): another base model raises ``ValueError``.

    ``generators`` must name the same generators that were saved (a forgotten one would silently break
    reproducibility). The model keeps its device and dtype; tensors are copied into it. ``verify=False`` skips the
    hashes (the caller has just run ``verify_checkpoint``); a file that cannot be read still raises
    ``CheckpointDamaged``.
    """
    path = Path(path)
    manifest = verify_checkpoint(path) if verify else _read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path} has no readable {MANIFEST}: it is not a complete checkpoint")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {manifest['format_version']}, this code reads {FORMAT_VERSION}")
    rng = _torch_load(path / "rng_state.pt")
    saved, given = sorted(rng["generators"]), sorted(generators or {})
    if saved != given:
        raise ValueError(f"{path} holds the states of generators {saved}, but {given} were passed: pass the same names")

    state: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        try:
            state.update(load_file(shard))
        except Exception as e:  # SafetensorError on a torn header
            raise CheckpointDamaged(f"{shard} cannot be read ({type(e).__name__}): the checkpoint is damaged") from None
    if is_lora_model(model):
        _load_lora(path, model, state)
    else:
        result = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})  # tied copies that save_pretrained leaves out
        if result.unexpected_keys or set(result.missing_keys) - tied:
            raise ValueError(
                f"{path} does not match the model: missing {sorted(set(result.missing_keys) - tied)}, "
                f"unexpected {sorted(result.unexpected_keys)}"
            )
    shards = sharded_path(path)
    if load_optimizer and shards is not None:
        from steer.distributed.fsdp import load_sharded

        load_sharded(model, optimizer, shards, weights=False)  # the weights came from the model files
    elif load_optimizer:
        optimizer.load_state_dict(_torch_load(path / "optimizer.pt"))
    _set_rng_state(rng, generators or {})
    return manifest["step"], manifest["extra"]


def _load_lora(path: Path, model: Any, merged: dict[str, torch.Tensor]) -> None:
    adapters = load_checkpoint_tensors(path, LORA_ADAPTERS)
    if adapters is None:
        raise ValueError(f"{path} holds no LoRA adapters: it was saved without model.lora; resume with model.lora.r=0")
    want = set(adapter_state(model))
    if set(adapters) != want:
        raise ValueError(
            f"{path}: its adapters do not match model.lora (missing {sorted(want - set(adapters))[:4]}, unexpected "
            f"{sorted(set(adapters) - want)[:4]}): resume with the run's r and target_modules"
        )
    model.load_state_dict(adapters, strict=False)
    now = sampler_state_dict(model)
    for name, saved in merged.items():
        if name not in now or not torch.allclose(now[name].detach().cpu(), saved, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"{path}: the base model's weights + these adapters do not give the saved weights of {name}: "
                "the base model (model.name_or_path) is not the one this LoRA run was trained on"
            )


def sharded_path(path: str | os.PathLike) -> Path | None:
    """The ``shards/`` folder of a checkpoint saved by trainer ranks, None for one saved in one process."""
    shards = Path(path) / SHARDS
    return shards if shards.is_dir() else None


def load_checkpoint_tensors(path: str | os.PathLike, name: str) -> dict[str, torch.Tensor] | None:
    """The tensor group ``name`` saved with ``save_checkpoint(tensors=...)``, or None when the checkpoint has none
    (verify the checkpoint first: ``verify_checkpoint`` covers these files too)."""
    file = Path(path) / TENSORS / f"{name}.safetensors"
    if not file.exists():
        return None
    try:
        return load_file(file)
    except Exception as e:  # SafetensorError on a torn header
        raise CheckpointDamaged(f"{file} cannot be read ({type(e).__name__}): the checkpoint is damaged") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file it cannot read is damaged. torch's own message would suggest
    ``weights_only=False``, which runs the file's pickled code: it is replaced, and its chain dropped."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:
        reason = type(e).__name__
    raise CheckpointDamaged(
        f"{path} cannot be read safely ({reason}): the checkpoint is damaged. Resume from an earlier checkpoint "
        f"(delete this folder) rather than loading it with fewer checks."
    )


def _rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002 (the global state)
    return {
        "python": (version, list(mt), gauss),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def _set_rng_state(rng: dict[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, key, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(rng["torch_cpu"])
    if rng["torch_cuda"] and torch.cuda.is_available():
        if len(rng["torch_cuda"]) != torch.cuda.device_count():
            raise ValueError(
                f"the checkpoint holds {len(rng['torch_cuda'])} CUDA RNG states but {torch.cuda.device_count()} "
                "devices are visible: resume with the same CUDA_VISIBLE_DEVICES"
            )
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    for name, g in generators.items():
        g.set_state(rng["generators"][name])


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return (
        manifest
        if isinstance(manifest, dict) and {"format_version", "step", "extra", "files"} <= set(manifest)
        else None
    )
