"""The vLLM rollout worker: a standalone script run by the python of ``.venv-vllm``.

vLLM's dependency pins conflict with Prefect's, so vLLM lives in its own venv and this script is its only entry
point: it imports vllm and the standard library, nothing from ``steer``, Prefect or MLflow. At module level it
imports the standard library only, so the client reuses its framing helpers (``send_message``, ``recv_message``).
The client (``steer.rollout.vllm_client.VLLMRolloutEngine``) starts it as

    .venv-vllm/bin/python steer/rollout/vllm_worker.py --port PORT --model DIR --engine-args JSON

with the environment variable ``STEER_VLLM_TOKEN`` set. The worker builds ``vllm.LLM`` on the HF folder ``DIR``,
runs one warm-up request, then connects to ``127.0.0.1:PORT`` (where the client listens) and serves requests on
that one connection until it closes or asks for ``shutdown``.

Wire protocol: each message is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. The worker
speaks first with ``{"op": "hello", "token", "pid", "vllm_version", "import_s", "init_s", "warmup_s"}``; then each
request ``{"op": ...}`` gets one reply, ``{"ok": true, ...}`` or ``{"ok": false, "error", "traceback"}``:

- ``generate``: ``prompt_token_ids`` (N lists), ``seeds`` (N ints), ``temperature``, ``top_p``,
  ``max_new_tokens``, ``stop_token_ids`` -> ``token_ids`` (N lists, the stop token included), ``logprobs``
  (N lists, the sampled token's log-prob), ``finish_reasons`` (N), ``elapsed_s``. One vLLM request per row with
  its own seed, so a row's sample does not depend on the rest of the batch.
- ``update_weights``: ``path`` (a folder of ``*.safetensors`` with checkpoint-format names) -> ``elapsed_s``;
  reloads every weight in place (``Worker.reload_weights``; on CPU also re-packs a tied LM head, see
  ``refresh_tied_lm_head``) and drops the prefix cache, whose KV entries were computed with the old weights.
- ``update_weights_shm``: ``shm`` (the name of a ``multiprocessing.shared_memory`` block) and ``manifest`` (one
  ``{name, dtype, shape, offset, nbytes}`` per tensor, checkpoint-format names) -> ``elapsed_s``. Each vLLM worker
  process maps the block and feeds zero-copy views through the same in-place reload (``reload_weights`` with a
  ``weights_iterator``: vLLM's ``load_weights`` and its post-load processing), then the prefix cache is dropped.
  No file and no serialisation: one copy into the block on the trainer's side, one into vLLM's tensors here.
- ``probe``: ``token_ids`` (one sequence) -> ``logprobs`` (the log-prob of each token after the first given the
  tokens before it, at temperature 1: vLLM's ``prompt_logprobs``), ``elapsed_s``. The client compares them with
  the trainer's after every weight sync.
- ``ping`` -> ``{"ok": true}``; ``shutdown`` -> ``{"ok": true}``, then the worker exits.

Log-probs: ``logprobs_mode="processed_logprobs"`` and ``SamplingParams(logprobs=0)`` give the sampled token's
log-prob under ``log_softmax(logits / temperature)`` after top-k/top-p filtering (renormalised over the nucleus),
and under ``log_softmax(logits)`` for greedy requests; with ``top_p=1`` this is exactly the hf backend's
``sampling_logp`` and what the trainer recomputes.

Environment defaults (set only when absent): ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (the engine core runs in this
process: one process fewer, and ``collective_rpc`` needs no cross-process pickling) and ``VLLM_CPU_KVCACHE_SPACE=1``
(GiB of KV cache on a CPU build; ignored on GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
import traceback
from typing import Any

HEADER = struct.Struct(">I")
"""Message length prefix: 4-byte big-endian unsigned."""


def send_message(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    sock.sendall(HEADER.pack(len(body)) + body)


def recv_message(sock: socket.socket) -> dict | None:
    """The next message, or None when the peer closed the connection."""
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    body = _recv_exact(sock, HEADER.unpack(header)[0])
    if body is None:
        return None
    return json.loads(body)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Worker:
    """Owns the ``vllm.LLM`` and answers the protocol's requests."""

    def __init__(self, model: str, engine_args: dict[str, Any]):
        t0 = time.perf_counter()
        import vllm
        from vllm import LLM

        self.vllm_version = vllm.__version__
        t1 = time.perf_counter()
        # prompts arrive as token ids and responses leave as token ids: vLLM needs no tokenizer
        self.llm = LLM(model=model, skip_tokenizer_init=True, logprobs_mode="processed_logprobs", **engine_args)
        t2 = time.perf_counter()
        self.generate({"prompt_token_ids": [[0]], "seeds": [0], "max_new_tokens": 2})  # first-call kernel setup
        self.timings = {"import_s": t1 - t0, "init_s": t2 - t1, "warmup_s": time.perf_counter() - t2}

    def generate(self, request: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in request["prompt_token_ids"]]
        params = [
            SamplingParams(
                n=1,
                temperature=float(request.get("temperature", 1.0)),
                top_p=float(request.get("top_p", 1.0)),
                max_tokens=int(request["max_new_tokens"]),
                seed=int(seed),
                logprobs=0,  # the sampled token's log-prob only
                stop_token_ids=list(request.get("stop_token_ids", [])),
                detokenize=False,
            )
            for seed in request["seeds"]
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)  # in input order
        token_ids, logprobs, finish_reasons = [], [], []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            token_ids.append(ids)
            logprobs.append([float(step[t].logprob) for t, step in zip(ids, completion.logprobs or [])])
            finish_reasons.append(completion.finish_reason)
        return {
            "ok": True,
            "token_ids": token_ids,
            "logprobs": logprobs,
            "finish_reasons": finish_reasons,
            "elapsed_s": time.perf_counter() - t0,
        }

    def update_weights(self, request: dict) -> dict:
        from vllm.platforms import current_platform

        t0 = time.perf_counter()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": request["path"]})
        if current_platform.is_cpu():
            self.llm.apply_model(refresh_tied_lm_head)
        self.llm.reset_prefix_cache()
        return {"ok": True, "elapsed_s": time.perf_counter() - t0}

    def update_weights_shm(self, request: dict) -> dict:
        from vllm.platforms import current_platform

        t0 = time.perf_counter()
        self.llm.collective_rpc(
            load_from_shared_memory, kwargs={"name": request["shm"], "manifest": request["manifest"]}
        )
        if current_platform.is_cpu():
            self.llm.apply_model(refresh_tied_lm_head)
        self.llm.reset_prefix_cache()
        return {"ok": True, "elapsed_s": time.perf_counter() - t0}

    def probe(self, request: dict) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        ids = [int(i) for i in request["token_ids"]]
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False, seed=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        logprobs = [float(step[t].logprob) for t, step in zip(ids[1:], out.prompt_logprobs[1:])]
        return {"ok": True, "logprobs": logprobs, "elapsed_s": time.perf_counter() - t0}

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op == "generate":
            return self.generate(request)
        if op == "update_weights":
            return self.update_weights(request)
        if op == "update_weights_shm":
            return self.update_weights_shm(request)
        if op == "probe":
            return self.probe(request)
        if op in ("ping", "shutdown"):
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}", "traceback": ""}


def load_from_shared_memory(worker: Any, name: str, manifest: list[dict]) -> int:
    """Run inside each vLLM worker process (``collective_rpc``): map the shared-memory block ``name`` and reload
    the model in place from zero-copy views of the tensors ``manifest`` describes; returns the bytes mapped.

    ``reload_weights(weights_iterator=...)`` is vLLM's own in-place reload (``load_weights`` plus the post-load
    processing of each layer), so tensor-parallel ranks each take their shard, as from a checkpoint file. The same
    layout code lives in ``steer.rollout.weight_sync`` (``read_from``); this process imports nothing from steer."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int64": torch.int64}
    shm = _attach(name)

    def tensors():
        for e in manifest:
            dtype = dtypes[e["dtype"]]
            count = e["nbytes"] // dtype.itemsize
            flat = torch.frombuffer(shm.buf, dtype=dtype, count=count, offset=e["offset"]) if count else None
            yield e["name"], flat.view(e["shape"]) if count else torch.empty(e["shape"], dtype=dtype)

    worker.reload_weights(weights_iterator=tensors())  # copies into vLLM's own tensors (param.data.copy_)
    return shm.size


_ATTACHED: dict[str, Any] = {}
"""The shared-memory blocks this process has mapped, by name: the trainer reuses one block step after step, so it is
mapped once (a new name, after the weights grew, replaces it)."""


def _attach(name: str) -> Any:
    """The block ``name``, mapped once. Attaching does not register it with this process's resource tracker: the
    trainer owns and unlinks it (Python 3.11's tracker would otherwise unlink it when this process exits)."""
    from multiprocessing import resource_tracker, shared_memory

    if name in _ATTACHED:
        return _ATTACHED[name]
    for old in list(_ATTACHED):
        block = _ATTACHED.pop(old)
        try:
            block.close()
        except BufferError:  # a view still alive in a reference cycle: collect it, then unmap
            import gc

            gc.collect()
            try:
                block.close()
            except BufferError:
                pass  # still referenced: the mapping goes with the process
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        _ATTACHED[name] = shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register
    return _ATTACHED[name]


def refresh_tied_lm_head(model: Any) -> bool:
    """Rebuild the packed GEMM of an LM head tied to the input embeddings; True if there was one.

    On CPU, vLLM (0.32) packs each linear weight for its GEMM kernel after loading, the tied LM head included.
    ``reload_weights`` refills the shared embedding weight and re-packs the embedding layer, but not the head,
    whose stale packed copy would keep producing the old logits (measured: mean |logp| error 1.8e-2 after a
    perturbation, instead of 2e-7). On GPU the unquantized head has nothing packed and this is not called."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or getattr(head, "weight", None) is not getattr(embed, "weight", None):
        return False
    head.quant_method.process_weights_after_loading(head)
    return True


def serve(sock: socket.socket, worker: Worker) -> None:
    """Answer requests until the client closes the connection or asks for ``shutdown``."""
    while (request := recv_message(sock)) is not None:
        try:
            reply = worker.handle(request)
        except Exception as e:  # the client raises it; the worker stays up for the next request
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        send_message(sock, reply)
        if request.get("op") == "shutdown":
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port where the client listens")
    parser.add_argument("--model", required=True, help="HF model folder to serve")
    parser.add_argument("--engine-args", default="{}", help="JSON object of extra vllm.LLM keyword arguments")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine_args = json.loads(args.engine_args)
    print(f"vllm.LLM engine args: {json.dumps(engine_args, sort_keys=True)}", flush=True)  # the log shows them
    worker = Worker(args.model, engine_args)
    with socket.create_connection(("127.0.0.1", args.port), timeout=60) as sock:
        sock.settimeout(None)
        hello = {"op": "hello", "token": os.environ.get("STEER_VLLM_TOKEN", ""), "pid": os.getpid()}
        send_message(sock, hello | {"vllm_version": worker.vllm_version} | worker.timings)
        serve(sock, worker)
    return 0


if __name__ == "__main__":  # vLLM may spawn processes that re-import this file: keep the work under the guard
    sys.exit(main())
