"""STEER update step vs the plain GRPO (clip-higher) update step on the same batch and model.

STEER adds, per micro-batch, the Omega estimate, one max and the weight map: O(N*T) elementwise work next to a
forward and backward pass. Goal: time ratio <= 1.02 for the paper's micro scope. The mini scope costs one extra no-grad
forward per optimizer step and is reported too. Runs interleaved repetitions and prints medians and ratios.

    .venv/bin/python bench/bench_update.py [--device cuda --dtype bf16 --hidden 1024 --layers 8 --vocab 151936]
"""

import argparse
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from steer.algorithms import get_algorithm
from steer.batch import build_policy_batch
from steer.objective import build_objective
from steer.scoring import score_batch
from steer.update import policy_update


def make_batch(n: int, prompt_len: int, t: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (prompt_len,), generator=g).tolist() for _ in range(n // 8)]
    group = torch.arange(n // 8).repeat_interleave(8)
    resp = torch.randint(3, vocab, (n, t), generator=g)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    adv = torch.randn(n, generator=g)
    return build_policy_batch(prompts, group, resp * mask.long(), mask, adv, pad_id=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--n", type=int, default=16, help="responses per rollout (mini-batch = n/2, micro = n/8)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--t", type=int, default=64, help="response length")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=4096,
    )
    model = Qwen2ForCausalLM(cfg).to(args.device)
    autocast = torch.bfloat16 if args.dtype == "bf16" else None
    batch = make_batch(args.n, args.prompt_len, args.t, args.vocab).to(args.device)
    batch.old_logp, batch.old_entropy = score_batch(model, batch, micro_batch_size=args.n // 8, autocast_dtype=autocast)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    arms = {
        "grpo(clip_higher)": get_algorithm("clip_higher"),
        "steer(micro)": get_algorithm("steer", token_weighting={"normaliser": "micro"}),
        "steer(rollout)": get_algorithm("steer", token_weighting={"normaliser": "rollout"}),
        "steer(mini)": get_algorithm("steer", token_weighting={"normaliser": "mini"}),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}

    def run(algo):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        policy_update(
            model,
            opt,
            batch,
            build_objective(algo),
            mini_batch_size=args.n // 2,
            micro_batch_size=args.n // 8,
            generator=torch.Generator().manual_seed(0),
            autocast_dtype=autocast,
        )
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for algo in arms.values():  # warm-up
        run(algo)
    for _ in range(args.reps):
        for name, algo in arms.items():
            times[name].append(run(algo))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model {n_params:.1f}M params, N={args.n}, P={args.prompt_len}, T={args.t}, V={args.vocab}, "
        f"device={args.device}, dtype={args.dtype}, {args.reps} interleaved reps"
    )
    base = statistics.median(times["grpo(clip_higher)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<20} median {med * 1e3:8.1f} ms   ratio vs grpo {med / base:6.3f}")


if __name__ == "__main__":
    main()
