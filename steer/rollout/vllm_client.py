"""Backend ``vllm``: sampling by vLLM in a worker process that runs in its own venv (``.venv-vllm``).

vLLM's pins conflict with Prefect's (fastapi), so it cannot live in the main venv. ``VLLMRolloutEngine`` starts
``steer/rollout/vllm_worker.py`` with that venv's python, in its own session (process group), and talks to it over
one loopback TCP connection with length-prefixed JSON messages (the protocol is in the worker's docstring). Only the
standard library is used here to talk to it; nothing in this module imports vllm.

- **Prompts** are tokenized here, by the trainer's tokenizer, exactly as the hf backend does, and sent as token ids;
  vLLM runs with ``skip_tokenizer_init`` and returns token ids, decoded here. Both backends therefore see the same
  ids, and the batch follows the hf conventions: row ``n = b * G + g``, right padding with the pad id, the EOS token
  inside ``response_mask``, ``truncated`` when no EOS was sampled.
- **Seeds**: each row is its own vLLM request seeded with ``row_seed(seed, b, g)``, so a call is reproducible and
  a row's sample does not depend on the rest of the batch (unlike the hf backend's one generator per batch).
- **Weights**: the trainer's model is written once to a folder in a private temp dir (``config.json`` plus one
  ``model.safetensors``) for the worker to start from. ``update_weights(model)`` then pushes the current weights,
  ``weight_sync="memory"`` (the default) through one shared-memory block the worker maps
  (``steer.rollout.weight_sync.SharedWeights``), ``"file"`` by rewriting the safetensors file; either way the worker
  reloads every weight in place and drops its prefix cache. After each sync the **probe check** compares the
  engine's and the trainer's log-probs of a fixed sequence and raises ``WeightSyncError`` above the tolerance.
  Measured costs and the GPU design (NCCL broadcast) are in ``docs/vllm.md``.
- **sampling_logp** is vLLM's log-prob of the sampled token under ``log_softmax(logits / temperature)``; with
  ``top_p=1`` it is the quantity the trainer recomputes as the old log-prob, so ``mean |sampling_logp - old_logp|``
  over the response mask measures the train/inference mismatch. With ``top_p < 1`` vLLM renormalises over the
  nucleus, which adds ``-log(nucleus mass)`` to each value.
- **Failures**: a worker that dies or breaks the connection raises ``VLLMWorkerError`` (with the tail of its log);
  the next call starts a fresh worker on the latest weights, so a retried task recovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import save_file

from steer.rollout.base import RolloutBatch, encode_prompts
from steer.rollout.hf import _eos_ids
from steer.rollout.vllm_worker import recv_message, send_message  # stdlib-only framing helpers
from steer.rollout.weight_sync import SharedWeights, check_probe, probe_token_ids, sync_tensors, trainer_probe_logp

ROOT = Path(__file__).resolve().parents[2]
"""The checkout root, where ``make vllm-venv`` puts ``.venv-vllm``."""
WORKER_SCRIPT = Path(__file__).with_name("vllm_worker.py")
VENV_HINT = "run `make vllm-venv` (see docs/vllm.md)"
_CAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16, "float32": torch.float32}


class VLLMWorkerError(RuntimeError):
    """The worker failed to start, died, or answered a request with an error."""


def row_seed(seed: int, prompt: int, sample: int) -> int:
    """A 63-bit seed for sample ``g`` of prompt ``b`` of a call seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}/{prompt}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_python(python: str | os.PathLike) -> Path:
    """The venv's interpreter: ``python`` as given if absolute, else relative to the current directory, else to
    the checkout root. Raises FileNotFoundError with the fix when none exists."""
    path = Path(python)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, ROOT / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"the vLLM venv's python was not found (tried {tried}): {VENV_HINT}")


def write_weights(model: Any, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model``'s parameters and buffers to ``folder/model.safetensors`` atomically (temp file + rename).

    Tied tensors (e.g. embeddings and LM head) are written once, under the first name of the state dict, which is
    the name checkpoints use (``model.embed_tokens.weight``). Floating tensors are cast to ``dtype`` if given."""
    return save_tensors(sync_tensors(model, dtype), folder)


def save_tensors(tensors: dict[str, torch.Tensor], folder: Path) -> Path:
    """Write ``tensors`` to ``folder/model.safetensors`` atomically (temp file + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / "model.safetensors"
    tmp = folder / f".model.safetensors.{os.getpid()}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, final)
    return final


class VLLMRolloutEngine:
    """``RolloutEngine`` backed by a vLLM worker process in its own venv.

    Args:
        model: the training model (a transformers causal LM; its config and weights are written for the worker),
            or the path of an HF model folder to serve as it is.
        tokenizer: the model's tokenizer (prompts are encoded and responses decoded here); loaded from ``model``
            when it is a path and this is None.
        python: the interpreter of the vLLM venv; relative paths are tried against the current directory, then
            the checkout root.
        dtype: vLLM's ``dtype``. ``"float32"`` by default: the trainer's precision, so the train/inference
            mismatch is numerical noise (measured ~3e-7); and vLLM's bfloat16 CPU kernels died with SIGILL on this
            project's CPU machines. On GPU pass ``"bfloat16"`` for speed and watch the mismatch metric; ``"auto"``
            is vLLM's rule (a float32 checkpoint is served in bfloat16). A 16-bit dtype also halves the bytes of
            the weight files written every step.
        max_model_len: longest prompt + response; None: the model's ``max_position_embeddings``.
        gpu_memory_utilization: share of GPU memory vLLM may take (None: vLLM's default, 0.9); lower it when the
            trainer shares the GPU.
        tensor_parallel_size: GPUs per model replica.
        enforce_eager: skip torch.compile / CUDA graphs; None: True without CUDA (compiling costs minutes on a
            few CPU cores), False with it.
        engine_args: further ``vllm.LLM`` keyword arguments (JSON-serialisable), e.g. ``{"seed": 0}``.
        startup_timeout: seconds to wait for the worker to load the model and connect.
        request_timeout: seconds to wait for one reply (None: no limit; generation of a large batch is slow).
        work_dir: parent of the private temp dir that holds the weights and the worker's log (None: the system
            temp dir; ``/dev/shm`` avoids disk I/O for large models).
        add_special_tokens: passed to the tokenizer when encoding prompts (as in the hf backend).
        env: extra environment variables for the worker (e.g. ``CUDA_VISIBLE_DEVICES``, ``VLLM_CPU_KVCACHE_SPACE``).
        weight_sync: how ``update_weights`` moves the weights: ``"memory"`` (a shared-memory block the worker maps,
            no file and no serialisation) or ``"file"`` (rewrite ``model.safetensors`` in ``work_dir``; the
            fallback, e.g. when the worker runs where the trainer's shared memory is not visible).
        probe_tokens: length of the probe sequence scored by both sides after every sync (0: no probe check).
        probe_tolerance: the largest |log-prob difference| on the probe the check accepts before it raises
            ``WeightSyncError`` (float32 on both sides measures ~1e-5; a bfloat16 engine needs ~0.1-0.5).
    """

    shares_model = False  # the worker holds its own copy: every update is pushed with update_weights

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        python: str | os.PathLike = ".venv-vllm/bin/python",
        dtype: str = "float32",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        engine_args: dict[str, Any] | None = None,
        startup_timeout: float = 600.0,
        request_timeout: float | None = None,
        work_dir: str | os.PathLike | None = None,
        add_special_tokens: bool = True,
        env: dict[str, str] | None = None,
        weight_sync: str = "memory",
        probe_tokens: int = 32,
        probe_tolerance: float = 1e-3,
    ):
        if weight_sync not in ("memory", "file"):
            raise ValueError(f"weight_sync={weight_sync!r}: use 'memory' (shared memory) or 'file' (safetensors)")
        self.weight_sync = weight_sync
        self.probe_tokens, self.probe_tolerance = probe_tokens, probe_tolerance
        self.sync_metrics: dict[str, float] = {}
        """The latest probe check (``rollout/sync_probe_*``) and sync time (``timing/weight_sync``)."""
        self._shm_update: dict | None = None  # the latest shared-memory sync, replayed on a restarted worker
        self.python = resolve_python(python)
        self.startup_timeout = startup_timeout
        self.request_timeout = request_timeout
        self.add_special_tokens = add_special_tokens
        self.env = dict(env or {})
        self.weight_dtype = _CAST_DTYPES.get(dtype)
        args: dict[str, Any] = {"dtype": dtype, "tensor_parallel_size": tensor_parallel_size}
        args["enforce_eager"] = (not torch.cuda.is_available()) if enforce_eager is None else enforce_eager
        if max_model_len is not None:
            args["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = gpu_memory_utilization
        self.engine_args = args | dict(engine_args or {})
        self.work_dir = Path(tempfile.mkdtemp(prefix="steer-vllm-", dir=work_dir))
        self.log_path = self.work_dir / "worker.log"
        self.timings: dict[str, float] = {}
        """Seconds of the latest worker start, generate and weight sync (``timing/vllm_*``, see docs/vllm.md)."""
        if isinstance(model, str | os.PathLike):
            self.model_dir = Path(model)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            model_for_eos: Any = SimpleNamespace(generation_config=_generation_config(self.model_dir))
        else:
            self.model_dir = self._write_model(model)
            model_for_eos = model
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id: set tokenizer.eos_token before sampling")
        self.tokenizer = tokenizer
        self.eos_ids: list[int] = [e] if isinstance(e := _eos_ids(model_for_eos, tokenizer), int) else list(e)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = tokenizer.eos_token_id if pad is None else pad
        self._state = SimpleNamespace(proc=None, sock=None, shared=SharedWeights())  # the finalizer must not hold self
        self._finalizer = weakref.finalize(self, _shutdown, self._state, self.work_dir)
        self._start_worker()

    # -- the RolloutEngine protocol ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str],
        *,
        n_samples: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int,
        seed: int,
    ) -> RolloutBatch:
        """Sample ``n_samples`` responses per prompt; see the module docstring for the conventions."""
        prompt_ids = encode_prompts(
            self.tokenizer,
            prompts,
            n_samples=n_samples,
            max_new_tokens=max_new_tokens,
            add_special_tokens=self.add_special_tokens,
        )
        b, g = len(prompts), n_samples
        reply = self._request(
            {
                "op": "generate",
                "prompt_token_ids": [ids for ids in prompt_ids for _ in range(g)],  # N = B * G, prompt-major
                "seeds": [row_seed(seed, i, j) for i in range(b) for j in range(g)],
                "temperature": float(temperature),
                "top_p": float(top_p),
                "max_new_tokens": int(max_new_tokens),
                "stop_token_ids": self.eos_ids,
            }
        )
        self.timings["timing/vllm_generate"] = reply["elapsed_s"]
        rows, logps = reply["token_ids"], reply["logprobs"]
        n, t = len(rows), max(len(r) for r in rows)
        response_ids = torch.full((n, t), self.pad_token_id, dtype=torch.long)  # (N, T)
        response_mask = torch.zeros((n, t), dtype=torch.float32)  # (N, T)
        sampling_logp = torch.zeros((n, t), dtype=torch.float32)  # (N, T)
        for i, (ids, lp) in enumerate(zip(rows, logps)):
            response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[i, : len(ids)] = 1.0
            sampling_logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        eos = set(self.eos_ids)
        truncated = torch.tensor([not (ids and ids[-1] in eos) for ids in rows], dtype=torch.bool)  # (N,)
        return RolloutBatch(
            prompt_ids=prompt_ids,
            group_index=torch.arange(b).repeat_interleave(g),  # (N,)
            sample_index=torch.arange(g).repeat(b),  # (N,)
            response_ids=response_ids,
            response_mask=response_mask,
            response_text=self.tokenizer.batch_decode(rows, skip_special_tokens=True),
            truncated=truncated,
            sampling_logp=sampling_logp,
        )

    def update_weights(self, model: Any) -> None:
        """Push ``model``'s current weights to the worker, then run the probe check against ``model`` (raises
        ``WeightSyncError`` when the engine disagrees). A folder path is loaded as it is (its ``*.safetensors``,
        checkpoint names; no probe: there is no trainer to compare with). Call it after every optimizer update,
        before the next ``generate``."""
        t0 = time.perf_counter()
        if isinstance(model, str | os.PathLike):
            self._reload_folder(Path(model), t0)
        else:
            self.push_tensors(sync_tensors(model, self.weight_dtype))
            if self.probe_tokens:
                self.check_sync(model)
        self.sync_metrics["timing/weight_sync"] = time.perf_counter() - t0
        self.timings["timing/vllm_weight_sync"] = time.perf_counter() - t0

    def push_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load ``tensors`` (checkpoint names, the engine's dtype) into the worker by the ``weight_sync`` path.
        ``update_weights`` calls it with the trainer's tensors; a test can push altered ones."""
        t0 = time.perf_counter()
        if self.weight_sync == "file":
            self._write_model_config()
            self._reload_folder(save_tensors(tensors, self.work_dir / "model").parent, t0)
            return
        name, manifest = self._state.shared.pack(tensors)
        t1 = time.perf_counter()
        self._shm_update = {"op": "update_weights_shm", "shm": name, "manifest": manifest}
        reply = self._request(self._shm_update)
        self.timings["timing/vllm_weight_write"] = t1 - t0
        self.timings["timing/vllm_weight_load"] = reply["elapsed_s"]

    def probe_logp(self, token_ids: list[int]) -> torch.Tensor:
        """(L-1,) the engine's log-prob of each token of ``token_ids`` after the first, given those before it."""
        reply = self._request({"op": "probe", "token_ids": [int(i) for i in token_ids]})
        return torch.tensor(reply["logprobs"], dtype=torch.float32)

    def check_sync(self, model: Any) -> dict[str, float]:
        """The probe check: score the fixed probe sequence (``probe_tokens`` ids drawn with seed 0 from the
        model's vocabulary) on the engine and on ``model``; record ``rollout/sync_probe_*`` in ``sync_metrics`` and
        raise ``WeightSyncError`` when the max |difference| exceeds ``probe_tolerance``."""
        t0 = time.perf_counter()
        ids = probe_token_ids(int(model.config.vocab_size), max(self.probe_tokens, 2))
        engine_logp = self.probe_logp(ids)
        self.sync_metrics = check_probe(engine_logp, trainer_probe_logp(model, ids), self.probe_tolerance)
        self.sync_metrics["timing/weight_sync_probe"] = time.perf_counter() - t0
        return self.sync_metrics

    def _reload_folder(self, path: Path, t0: float) -> None:
        t1 = time.perf_counter()
        reply = self._request({"op": "update_weights", "path": str(path)})
        self.model_dir = path  # a restarted worker starts from the latest weights
        self._shm_update = None
        self.timings["timing/vllm_weight_write"] = t1 - t0
        self.timings["timing/vllm_weight_load"] = reply["elapsed_s"]

    def close(self) -> None:
        """Stop the worker (polite ``shutdown``, then SIGTERM/SIGKILL to its process group) and remove the temp
        dir. Also runs when the engine is garbage-collected or the interpreter exits."""
        self._finalizer()

    # -- the worker -----------------------------------------------------------------------------------------------

    @property
    def worker_pid(self) -> int | None:
        proc = self._state.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _write_model(self, model: Any) -> Path:
        """Write ``model`` to the private ``work_dir/model`` folder (config files once, weights every time)."""
        folder = self.work_dir / "model"
        if not (folder / "config.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            model.config.save_pretrained(folder)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(folder)
        write_weights(model, folder, self.weight_dtype)
        return folder

    def _write_model_config(self) -> None:
        """``work_dir/model`` must hold a config before weights are reloaded from it (a folder-served engine)."""
        folder = self.work_dir / "model"
        if not (folder / "config.json").exists():
            import shutil

            shutil.copytree(self.model_dir, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors"))

    def _start_worker(self) -> None:
        """Start the worker on ``model_dir`` and wait until it connects back, or raise VLLMWorkerError."""
        t0 = time.perf_counter()
        token = secrets.token_hex(16)
        with socket.create_server(("127.0.0.1", 0)) as server:
            server.settimeout(1.0)
            command = [
                str(self.python),
                str(WORKER_SCRIPT),
                "--port",
                str(server.getsockname()[1]),
                "--model",
                str(self.model_dir),
                "--engine-args",
                json.dumps(self.engine_args),
            ]
            env = os.environ | self.env | {"STEER_VLLM_TOKEN": token, "PYTHONUNBUFFERED": "1"}
            env.pop("PYTHONPATH", None)  # the worker must not see the main venv's packages
            with open(self.log_path, "ab") as log:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.work_dir,
                    start_new_session=True,
                )
            self._state.proc = proc
            deadline = time.monotonic() + self.startup_timeout
            while True:
                if proc.poll() is not None:
                    _stop(self._state)
                    raise self._error(f"the vLLM worker exited with code {proc.returncode} while starting", True)
                if time.monotonic() > deadline:
                    _stop(self._state)
                    raise self._error(f"the vLLM worker did not connect within {self.startup_timeout:.0f} s", True)
                try:
                    sock, _ = server.accept()
                except TimeoutError:
                    continue
                sock.settimeout(30.0)
                hello = recv_message(sock)
                if hello is not None and hello.get("token") == token:
                    break
                sock.close()  # not our worker
        sock.settimeout(self.request_timeout)
        self._state.sock = sock
        self.worker_info = hello
        self.timings["timing/vllm_worker_start"] = time.perf_counter() - t0

    def _request(self, message: dict) -> dict:
        """Send one request and return its reply; (re)starts the worker if needed."""
        if self._state.sock is None:
            self._start_worker()  # the model folder holds the latest file-synced weights
            if self._shm_update is not None and message is not self._shm_update:
                self._request(self._shm_update)  # the block holds the latest memory-synced ones
        try:
            send_message(self._state.sock, message)
            reply = recv_message(self._state.sock)
        except OSError as e:
            _stop(self._state)
            raise self._error(f"lost the vLLM worker during {message['op']!r}: {e}") from e
        if reply is None:
            _stop(self._state)
            raise self._error(f"the vLLM worker closed the connection during {message['op']!r}")
        if not reply.get("ok"):
            raise VLLMWorkerError(
                f"the vLLM worker failed {message['op']!r}: {reply.get('error')}\n{reply.get('traceback', '')}"
            )
        return reply

    def _error(self, what: str, starting: bool = False) -> VLLMWorkerError:
        hint = f"; if the venv is missing vllm or broken, {VENV_HINT}" if starting else ""
        return VLLMWorkerError(f"{what} ({self.python}){hint}. Last lines of its log:\n{_tail(self.log_path)}")


def _generation_config(folder: Path) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(state: SimpleNamespace, grace: float = 10.0) -> None:
    """Close the connection and end the worker's process group: shutdown request, then SIGTERM, then SIGKILL."""
    proc, sock = state.proc, state.sock
    state.proc = state.sock = None
    if sock is not None:
        try:
            sock.settimeout(grace)
            send_message(sock, {"op": "shutdown"})
            recv_message(sock)
        except OSError:
            pass
        sock.close()
    if proc is None:
        return
    try:
        proc.wait(grace if sock is not None else 0.1)
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the worker leads its own session: this reaches its children too
        except ProcessLookupError:
            break
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


def _shutdown(state: SimpleNamespace, work_dir: Path) -> None:
    """Finalizer of an engine: stop the worker, remove its temp dir."""
    import shutil

    try:
        _stop(state)
    finally:
        state.shared.close()
        shutil.rmtree(work_dir, ignore_errors=True)
