"""The update on 2 trainer ranks (gloo, CPU, FSDP2, Ray actors) against 1 process, on the same global batch.

A random-weight Qwen2-shaped policy (``--hidden``, ``--layers``), one rollout of ``--n`` responses of ``--t``
tokens, GRPO, ``--mini`` responses per optimizer step, micro-batches of ``--micro``. Prints the update's wall time
(median of ``--reps`` after a warm-up, Ray start and sharding excluded) for one process with 1 and with
``--ranks`` torch threads, and for ``--ranks`` ranks with 1 thread each, the ratio, and
``perf/tokens_per_s_per_rank``. A measurement, not a test.

    PYTHONPATH=. .venv/bin/python bench/bench_distributed.py [--ranks 2 --n 64 --t 64 --hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from steer.algorithms import get_algorithm
from steer.batch import build_policy_batch
from steer.distributed.group import RankGroup
from steer.objective import build_objective
from steer.scoring import score_batch
from steer.update import policy_update

OPTIM = dict(lr=1e-5, weight_decay=0.01, betas=(0.9, 0.999))


def make_model(hidden: int, layers: int, vocab: int) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=1024,
    )
    return Qwen2ForCausalLM(cfg).float()


def make_batch(n: int, t: int, vocab: int, prompt: int = 16):
    g = torch.Generator().manual_seed(0)
    groups = n // 8
    prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(groups)]
    lengths = torch.randint(t // 4, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()  # (N, T)
    resp = torch.randint(3, vocab, (n, t), generator=g) * mask.long()
    adv = torch.randn(n, generator=g)
    return build_policy_batch(prompts, torch.arange(groups).repeat_interleave(8), resp, mask, adv, pad_id=0)


def local_times(args, settings, threads: int) -> list[float]:
    torch.set_num_threads(threads)
    model = make_model(args.hidden, args.layers, args.vocab)
    opt = torch.optim.AdamW(model.parameters(), **OPTIM)
    objective = build_objective(get_algorithm("grpo"))
    times = []
    for rep in range(args.reps + 1):
        batch = make_batch(args.n, args.t, args.vocab)
        t0 = time.perf_counter()
        batch.old_logp, batch.old_entropy = score_batch(model, batch, micro_batch_size=args.micro)
        policy_update(model, opt, batch, objective, generator=torch.Generator().manual_seed(rep), **settings)
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--t", type=int, default=64)
    ap.add_argument("--mini", type=int, default=32)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    settings = dict(mini_batch_size=args.mini, micro_batch_size=args.micro, epochs=1, temperature=1.0)
    tokens = float(make_batch(args.n, args.t, args.vocab).response_mask.sum())
    n_params = sum(p.numel() for p in make_model(args.hidden, args.layers, args.vocab).parameters())
    print(f"policy {n_params / 1e6:.2f}M params; N={args.n} x T={args.t} ({tokens:.0f} response tokens), "
          f"mini {args.mini}, micro {args.micro}; median of {args.reps} updates")  # fmt: skip
    rows = {}
    for threads in sorted({1, args.ranks}):
        rows[f"1 process, {threads} thread(s)"] = statistics.median(local_times(args, settings, threads))
    with RankGroup(args.ranks, timeout_s=600) as group:
        group.setup(make_model(args.hidden, args.layers, args.vocab), get_algorithm("grpo"), **OPTIM)
        walls, per_rank = [], []
        for rep in range(args.reps + 1):
            t0 = time.perf_counter()
            out = group.update(
                make_batch(args.n, args.t, args.vocab), rep, max_grad_norm=1.0, max_response_len=None, **settings
            )
            walls.append(time.perf_counter() - t0)
            per_rank.append(out["metrics"]["perf/tokens_per_s_per_rank"])
        rows[f"{args.ranks} ranks (gloo), 1 thread each"] = statistics.median(walls[1:])
        rank_tps = statistics.median(per_rank[1:])
    base = rows["1 process, 1 thread(s)"]
    print(f"{'update':<34} {'wall s':>8} {'vs 1 proc 1 thr':>16} {'tokens/s':>10}")
    for name, wall in rows.items():
        print(f"{name:<34} {wall:8.3f} {wall / base:16.2f} {tokens / wall:10.0f}")
    print(f"perf/tokens_per_s_per_rank ({args.ranks} ranks): {rank_tps:.0f}")


if __name__ == "__main__":
    main()
