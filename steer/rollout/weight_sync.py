"""Weight sync between the trainer and a rollout engine that holds its own copy: a shared-memory buffer and the
probe check that runs after every sync.

- **Shared memory** (``weight_sync = "memory"``): ``SharedWeights`` packs the trainer's tensors (tied tensors once,
  cast to the sampler's dtype) into one ``multiprocessing.shared_memory`` block, each tensor at a 64-byte aligned
  offset, and returns a ``manifest`` (name, dtype, shape, offset, bytes per tensor). The vLLM worker maps the same
  block and hands zero-copy views to vLLM's weight loader (``steer/rollout/vllm_worker.py``): no serialisation, no
  file, one memcpy on each side. The block is created once and reused while the weights keep their size.
- **Probe check**: after a sync, the engine scores a fixed probe sequence (``probe_token_ids``) and the trainer does
  the same (``trainer_probe_logp``); ``probe_max_abs_diff`` is the largest |difference| of the per-token log-probs.
  A missed or wrong sync moves it by orders of magnitude above the numerical noise of the two implementations
  (float32 on both sides: ~1e-5), so a tolerance turns a silent wrong sync into an error (``WeightSyncError``).

Pure torch and the standard library; nothing here imports vLLM.
"""

from __future__ import annotations

import secrets
from multiprocessing import shared_memory
from typing import Any

import torch
from torch import Tensor

from steer.lora import sampler_state_dict

ALIGN = 64
"""Byte alignment of every tensor in the buffer (a cache line; AVX-512 loads)."""
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.int64: "int64"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


class WeightSyncError(RuntimeError):
    """The engine's weights disagree with the trainer's after a sync (the probe check failed)."""


def sync_tensors(model: Any, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """``model``'s parameters and buffers as the engine loads them: tied tensors (embeddings and LM head) once,
    under the first name of the state dict (the checkpoint's, ``model.embed_tokens.weight``); floating tensors cast
    to ``dtype`` if given. Detached, on the CPU, contiguous."""
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in sampler_state_dict(model).items():  # a LoRA model's merged weights, under the base names
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.cpu().contiguous()
    return tensors


def layout(tensors: dict[str, Tensor]) -> tuple[list[dict[str, Any]], int]:
    """The manifest of ``tensors`` in one buffer and the buffer's size in bytes: entries ``{name, dtype, shape,
    offset, nbytes}`` in insertion order, each offset a multiple of ``ALIGN``."""
    manifest, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} cannot go through the shared-memory sync")
        nbytes = t.numel() * t.element_size()
        manifest.append(
            {"name": name, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "offset": offset, "nbytes": nbytes}
        )
        offset += -(-nbytes // ALIGN) * ALIGN
    return manifest, max(offset, ALIGN)


def write_into(buf: memoryview, manifest: list[dict[str, Any]], tensors: dict[str, Tensor]) -> None:
    """Copy each tensor's bytes to its offset in ``buf``: one single-threaded memcpy each (numpy's; torch's
    ``copy_`` goes through its OpenMP pool, which measured 0.1-0.5 s instead of 1 ms for 3 MB on a loaded machine)."""
    for entry in manifest:
        t = tensors[entry["name"]]
        if entry["nbytes"]:
            src = t.reshape(-1).view(torch.uint8).numpy()
            start = entry["offset"]
            buf[start : start + entry["nbytes"]] = memoryview(src)


def read_from(buf: memoryview, manifest: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Zero-copy views of the tensors ``manifest`` describes in ``buf`` (valid while ``buf`` is mapped). The
    worker has its own copy of this function (it imports nothing from steer); this one is its reference."""
    out = {}
    for e in manifest:
        count = e["nbytes"] // DTYPES[e["dtype"]].itemsize
        if not count:
            out[e["name"]] = torch.empty(e["shape"], dtype=DTYPES[e["dtype"]])
            continue
        flat = torch.frombuffer(buf, dtype=DTYPES[e["dtype"]], count=count, offset=e["offset"])
        out[e["name"]] = flat.view(e["shape"])
    return out


class SharedWeights:
    """One shared-memory block that holds a model's tensors for the engine; owned (and unlinked) by the trainer.

    ``pack(tensors)`` writes them and returns ``(name, manifest)`` for the worker; a block too small for the new
    tensors is replaced by a larger one (the worker attaches to the block named in each request)."""

    def __init__(self, prefix: str = "steer-w"):
        self.prefix = prefix
        self.shm: shared_memory.SharedMemory | None = None

    def pack(self, tensors: dict[str, Tensor]) -> tuple[str, list[dict[str, Any]]]:
        manifest, size = layout(tensors)
        if self.shm is None or self.shm.size < size:
            self.close()
            self.shm = shared_memory.SharedMemory(name=f"{self.prefix}-{secrets.token_hex(6)}", create=True, size=size)
        write_into(self.shm.buf, manifest, tensors)
        return self.shm.name, manifest

    def close(self) -> None:
        """Unmap and remove the block (the worker's mapping, if any, stays valid until it unmaps)."""
        if self.shm is not None:
            shm, self.shm = self.shm, None
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                pass


def probe_token_ids(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    """A fixed probe sequence: ``length`` token ids drawn uniformly from ``[0, vocab_size)`` by a generator seeded
    with ``seed``. Random tokens exercise every row of the embedding and the LM head's columns evenly, and their
    log-probs sit far from 0 where the softmax is least saturated, so a wrong weight shows."""
    if length < 2:
        raise ValueError(f"a probe needs at least 2 tokens (got {length})")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size, (length,), generator=g).tolist()


@torch.no_grad()
def trainer_probe_logp(model: Any, token_ids: list[int]) -> Tensor:
    """(L-1,) float32 log-prob of token ``i`` given tokens ``< i`` under ``model`` (temperature 1), i = 1..L-1:
    the quantity vLLM's ``prompt_logprobs`` returns for the same sequence. One forward; the model's train/eval mode
    is left as it is (the policies here have no dropout)."""
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)  # (1, L)
    logits = model(input_ids=ids).logits[0, :-1].float()  # (L-1, V)
    logp = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # (L-1,)
    return logp.cpu()


def probe_max_abs_diff(engine_logp: Tensor, trainer_logp: Tensor) -> float:
    """max_i |engine_logp_i - trainer_logp_i| over the probe's (L-1,) positions; inf when a value is not finite
    (a NaN weight must fail the check, not pass it)."""
    if engine_logp.shape != trainer_logp.shape:
        raise ValueError(f"probe log-probs of shapes {tuple(engine_logp.shape)} and {tuple(trainer_logp.shape)}")
    diff = (engine_logp.double() - trainer_logp.double()).abs()  # (L-1,)
    return float(diff.max()) if bool(torch.isfinite(diff).all()) else float("inf")


def check_probe(engine_logp: Tensor, trainer_logp: Tensor, tolerance: float) -> dict[str, float]:
    """The probe metrics; raises ``WeightSyncError`` when the max |difference| exceeds ``tolerance``."""
    worst = probe_max_abs_diff(engine_logp, trainer_logp)
    mean = float((engine_logp.double() - trainer_logp.double()).abs().mean())
    if not worst <= tolerance:
        raise WeightSyncError(
            f"weight sync check failed: the engine's log-probs of the probe sequence differ from the trainer's by "
            f"up to {worst:.3g} (mean {mean:.3g}), above rollout.sync_probe_tolerance={tolerance:g}. The sampler "
            f"is not running the trainer's weights; if the engine runs in a lower precision than the trainer (e.g. "
            f"bfloat16), raise the tolerance to that precision's noise"
        )
    return {"rollout/sync_probe_max_abs_diff": worst, "rollout/sync_probe_mean_abs_diff": mean}
