"""FSDP2 on one device costs (almost) nothing: the update's tokens/s, MFU and peak memory, FSDP2 vs the local path.

A random-weight policy of the Qwen2.5-1.5B shape (28 layers, hidden 1536, vocab 151936; ``--tiny`` for a toy shape
that runs on a CPU in seconds, to check this script executes), one rollout of ``--n`` responses of ``--t`` tokens
after a ``--prompt``-token prompt, GRPO, one optimizer step per ``--mini`` responses, micro-batches of ``--micro``,
log-probs chunked (``steer.logprobs``). Both paths run ``steer.update.policy_update``:

- local: the model in fp32 under bf16 autocast (``model.autocast_bf16``), as ``trainer.backend=local`` trains;
- fsdp: ``fully_shard`` on a one-rank process group (NCCL on GPU, gloo on CPU) with ``MixedPrecisionPolicy`` bf16,
  as one rank of ``trainer.backend=ray`` trains (``steer.distributed.fsdp.shard_model``).

Prints, per path, the median update time of ``--reps`` after a warm-up, tokens/s (prompt + response tokens), MFU =
6 x params x tokens / time / peak FLOP/s (``--peak-tflops``: 989 for H100/H200 bf16 dense), and the peak memory
(CUDA's max allocated). For a lent single H100/H200, about 2-4 minutes:

    PYTHONPATH=. .venv/bin/python bench/gpu_fsdp_check.py            # 1.5B shape, cuda
    PYTHONPATH=. .venv/bin/python bench/gpu_fsdp_check.py --tiny     # CPU, seconds: does it run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
from transformers import Qwen2Config, Qwen2ForCausalLM

from steer.algorithms import get_algorithm
from steer.batch import build_policy_batch
from steer.distributed.fsdp import shard_model
from steer.objective import build_objective
from steer.update import policy_update

SHAPES = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip


def make_model(shape: str, device: torch.device, checkpointing: bool) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=8192, **SHAPES[shape])).float().to(device)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def make_batch(args, vocab: int, device: torch.device, rep: int):
    g = torch.Generator().manual_seed(rep)
    groups = max(args.n // 8, 1)
    prompts = [torch.randint(3, vocab, (args.prompt,), generator=g).tolist() for _ in range(groups)]
    mask = torch.ones(args.n, args.t)  # (N, T): full-length responses, so tokens/s counts the budget
    resp = torch.randint(3, vocab, (args.n, args.t), generator=g)
    adv = torch.randn(args.n, generator=g)
    group = torch.arange(groups).repeat_interleave(args.n // groups)
    return build_policy_batch(prompts, group, resp, mask, adv, pad_id=0).to(device)


def run(path: str, args, device: torch.device) -> dict[str, float]:
    model = make_model(args.shape, device, args.checkpointing)
    n_params = sum(p.numel() for p in model.parameters())
    autocast = torch.bfloat16 if path == "local" and device.type == "cuda" else None
    if path == "fsdp":
        model = shard_model(model, bf16=device.type == "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    objective = build_objective(get_algorithm("grpo"))
    settings = dict(mini_batch_size=args.mini, micro_batch_size=args.micro, autocast_dtype=autocast)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for rep in range(args.reps + 1):
        batch = make_batch(args, SHAPES[args.shape]["vocab_size"], device, rep)  # on-policy: old = own forward
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        policy_update(model, opt, batch, objective, generator=torch.Generator().manual_seed(rep), **settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    wall = statistics.median(times[1:])
    tokens = args.n * (args.prompt + args.t)
    peak = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else float("nan")
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(params=n_params, wall=wall, tps=tokens / wall, mfu=6 * n_params * tokens / wall / args.peak, peak=peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy shape on the CPU: check that the script runs")
    ap.add_argument("--n", type=int, default=16, help="responses per rollout (= one optimizer step by default)")
    ap.add_argument("--t", type=int, default=1024, help="response tokens")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    ap.add_argument("--mini", type=int, default=None, help="responses per optimizer step (default: --n)")
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 TFLOP/s")
    args = ap.parse_args()
    if args.tiny:
        args.n, args.t, args.prompt, args.micro, args.reps = 8, 16, 8, 4, 2
    args.shape = "tiny" if args.tiny else "1.5b"
    args.mini = args.mini or args.n
    args.peak = args.peak_tflops * 1e12
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        print(f"device {device}, shape {args.shape}, N={args.n} x (prompt {args.prompt} + T {args.t}), "
              f"micro {args.micro}, checkpointing {args.checkpointing}")  # fmt: skip
        print(f"{'path':<6} {'params':>9} {'update s':>9} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
        results = {}
        for path in ("local", "fsdp"):
            r = results[path] = run(path, args, device)
            print(f"{path:<6} {r['params'] / 1e6:8.1f}M {r['wall']:9.3f} {r['tps']:10.0f} {r['mfu']:7.1%} "
                  f"{r['peak']:9.2f}")  # fmt: skip
        print(f"fsdp / local update time: {results['fsdp']['wall'] / results['local']['wall']:.3f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
