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

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op == "generate":
            return self.generate(request)
        if op == "update_weights":
            return self.update_weights(request)
        if op in ("ping", "shutdown"):
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}", "traceback": ""}


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
