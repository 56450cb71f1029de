"""Benchmark: chunked vs naive per-token log-prob + entropy at the Qwen2.5 vocabulary (V = 151,936).

    .venv/bin/python bench/bench_logprobs.py                      # CPU: N*T = 4096 rows (N=8, T=512), bf16
    .venv/bin/python bench/bench_logprobs.py --device cuda --rows 16384
    .venv/bin/python bench/bench_logprobs.py --layout spare-row  # the training path's input before it asked for T

The logits are laid out as the training path produces them (``--layout exact``: ``steer.scoring.forward_logprobs``
asks the model for exactly the T positions that predict response tokens, so they arrive contiguous and are read in
place). ``--layout spare-row`` is the earlier path: T + 1 positions with the last sliced off, a non-contiguous view
that ``reshape`` copies once in full (+1.16 GiB at the default size) before the chunked pass.

Each of the four variants {naive, chunked} x {fwd, fwd+bwd} runs in its own subprocess, so one variant's
allocations cannot hide in another's high-water mark:

* fwd: under ``torch.no_grad()``, as when scoring old-policy / reference log-probs.
* fwd+bwd: logits are a leaf with ``requires_grad``; the loss is ``sum(w1 * logp + w2 * entropy)`` with random
  per-token weights (a policy-gradient loss plus an entropy term), then ``backward()``.

Peak extra memory is the high-water mark during the timed calls minus the resident memory once the logits and
tokens exist. On CPU that is the process RSS: ``VmHWM`` is reset through ``/proc/self/clear_refs`` after setup
(fallback: ``ru_maxrss``, which then includes setup); glibc serves these large blocks with mmap and returns them on
free, so RSS tracks live tensors. On CUDA it is ``torch.cuda.max_memory_allocated``. fwd+bwd necessarily includes
the (N*T, V) gradient in the logits' dtype (1.16 GiB at the default size), which both variants must produce; the
table shows it so the extra beyond it can be read off. Time is the median of ``--reps`` runs (CUDA: after one
warm-up; CPU: none, each call in either variant maps fresh memory anyway, and 2 runs keep the whole benchmark under
3 minutes on 2 cores). The logits are 64 random rows tiled, which is quick to build on CPU and costs the same.

Why N*T = 4096 by default: a realistic RL micro-batch (8 responses x 512 tokens) whose naive fwd+bwd peak (~11.6
GiB) still fits a 23 GB CPU box next to other work; on a GPU use larger --rows (e.g. 16384).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
GIB = 2**30


def _rss_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict:
    """One variant in this process: returns median time (s) and peak extra memory (bytes) as a dict."""
    import torch

    from steer.logprobs import naive_logprobs_and_entropy, token_logprobs_and_entropy

    torch.manual_seed(0)
    dev, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    n = args.rows // args.seq_len if args.rows % args.seq_len == 0 else 1
    t = args.rows // n
    spare = 1 if args.layout == "spare-row" else 0  # the old training layout: T + 1 rows, the last sliced off
    logits = torch.empty(n, t + spare, args.vocab, device=dev, dtype=dtype)  # (N, T [+ 1], V)
    rows = torch.randn(64, args.vocab, device=dev) * 3.0  # 64 random rows tiled: quick to make on CPU
    flat = logits.view(-1, args.vocab)
    for s in range(0, flat.shape[0], 64):
        flat[s : s + 64] = rows[: flat.shape[0] - s]
    if spare:
        logits = logits.detach()[:, :t]  # (N, T, V) non-contiguous view, as logits[:, :-1] was
    tokens = torch.randint(0, args.vocab, (n, t), device=dev)  # (N, T)
    w1, w2 = torch.randn(n, t, device=dev), torch.randn(n, t, device=dev)  # (N, T)
    if args.impl == "chunked":
        fn = lambda x, y: token_logprobs_and_entropy(x, y, temperature=args.temperature, chunk_size=args.chunk_size)  # noqa: E731
    else:
        fn = lambda x, y: naive_logprobs_and_entropy(x, y, temperature=args.temperature)  # noqa: E731
    backward = args.mode == "fwd+bwd"
    if backward and spare:  # a non-leaf view of a leaf: the gradient lands on the (N, T + 1, V) base
        base_leaf = logits._base.requires_grad_(True)
        logits = base_leaf[:, :t]
    else:
        logits.requires_grad_(backward)

    def step():
        if backward:
            logp, ent = fn(logits, tokens)
            ((w1 * logp).sum() + (w2 * ent).sum()).backward()
            if spare:
                base_leaf.grad = None
            else:
                logits.grad = None
        else:
            with torch.no_grad():
                fn(logits, tokens)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes("VmRSS")
        hwm_reset = _reset_peak_rss()
    times = []
    warmup = 1 if dev.type == "cuda" else 0  # CUDA: lazy init; CPU: every call maps fresh memory anyway
    for i in range(warmup + args.reps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    elif hwm_reset:
        peak = _rss_bytes("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_bytes = logits.numel() * logits.element_size() if backward else 0
    return {"time_s": statistics.median(times), "peak_extra": peak - base, "grad_bytes": grad_bytes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=4096, help="N*T token rows (default 4096 = 8 x 512)")
    p.add_argument("--seq-len", type=int, default=512, help="T; N = rows / T (default 512)")
    p.add_argument("--vocab", type=int, default=151_936, help="V (default: Qwen2.5's 151,936)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="logits dtype (default bf16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--temperature", type=float, default=0.9, help="tau != 1 so the division is exercised")
    p.add_argument(
        "--layout",
        choices=["exact", "spare-row"],
        default="exact",
        help="exact: contiguous (N, T, V), what steer.scoring.forward_logprobs feeds the log-softmax (it asks the "
        "model for exactly the T positions); spare-row: the earlier layout, T + 1 positions and the last sliced off, "
        "a non-contiguous view that the chunked path had to copy",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: the library's)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per variant (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--impl", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--mode", choices=["fwd", "fwd+bwd"], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.rows % 64:
        p.error("--rows must be a multiple of 64")
    if args.reps is None:
        args.reps = 10 if args.device.startswith("cuda") else 2
    if args.chunk_size is None:
        from steer.logprobs import DEFAULT_CHUNK_SIZE

        args.chunk_size = DEFAULT_CHUNK_SIZE
    if args.impl is not None:
        print(json.dumps(worker(args)))
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    print(
        f"rows={args.rows} vocab={args.vocab} dtype={args.dtype} device={args.device} tau={args.temperature} "
        f"layout={args.layout} "
        f"chunk_size={args.chunk_size} reps={args.reps} threads={os.cpu_count()}"
    )
    results = {}
    for mode in ["fwd", "fwd+bwd"]:
        for impl in ["naive", "chunked"]:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--impl", impl, "--mode", mode]
            cmd += ["--chunk-size", str(args.chunk_size), "--reps", str(args.reps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{impl} {mode} failed:\n{out.stderr}")
            results[mode, impl] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"\n{'mode':8} {'impl':8} {'time (s)':>9} {'peak extra (GiB)':>17} {'of which grad':>14}")
    for (mode, impl), r in results.items():
        print(f"{mode:8} {impl:8} {r['time_s']:9.3f} {r['peak_extra'] / GIB:17.3f} {r['grad_bytes'] / GIB:14.3f}")
    print("\nratios chunked / naive (goals: memory <= 0.125, time <= 1.1)")
    for mode in ["fwd", "fwd+bwd"]:
        c, n = results[mode, "chunked"], results[mode, "naive"]
        mem = c["peak_extra"] / n["peak_extra"]
        beyond = (c["peak_extra"] - c["grad_bytes"]) / (n["peak_extra"] - n["grad_bytes"])
        line = f"{mode:8} memory {mem:6.3f}"
        if c["grad_bytes"]:
            line += f"  memory beyond the gradient {beyond:6.3f}"
        print(f"{line}  time {c['time_s'] / n['time_s']:6.3f}")


if __name__ == "__main__":
    main()
