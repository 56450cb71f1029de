"""Sampling throughput of the ``hf`` rollout backend on a randomly initialised Qwen2-shaped model (no hub access).

Prints one JSON line: device, model size, batch shape, seconds and generated tokens per second, peak GPU memory, and
the train/inference log-prob mismatch (the engine's ``sampling_logp`` against one full forward pass in the same
dtype), which bounds what the trainer's recomputed old log-probs can differ by.

    python bench/gpu_rollout_check.py                 # ~0.5B (Qwen2.5-0.5B shape), bf16, batch 64, on CUDA
    python bench/gpu_rollout_check.py --smoke         # tiny sizes on the CPU, a few seconds

A random model almost never samples EOS, so every row runs to ``--new-tokens``: the throughput is for full-length
responses (the worst case of the decode loop, which feeds finished rows until the last one ends).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from steer.rollout.hf import HFRolloutEngine  # noqa: E402

QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    tie_word_embeddings=True,
)
SMOKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1000,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def synthetic_tokenizer(vocab_size: int):
    """Word-level tokenizer whose token ``i`` is the string ``t<i>``, except ids 0, 1, 2: <pad>, <eos>, <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(3, vocab_size)} | {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (checks the script, not the speed)")
    p.add_argument("--prompts", type=int, default=8, help="B distinct prompts")
    p.add_argument("--samples", type=int, default=8, help="G samples per prompt (batch N = B * G)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="prompt length in tokens")
    p.add_argument("--new-tokens", type=int, default=512, help="max new tokens per response")
    p.add_argument("--dtype", default="bfloat16", help="model dtype on the GPU (the CPU smoke run uses float32)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up run; the best is reported")
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM, Qwen2Config

    if args.smoke:
        sizes, device, dtype = SMOKE, "cpu", torch.float32
        args.prompts, args.samples, args.prompt_tokens, args.new_tokens, args.repeats = 2, 4, 16, 16, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke on a CPU")
        sizes, device, dtype = QWEN25_05B, "cuda", getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**sizes), dtype=dtype)
    model.eval()
    tok = synthetic_tokenizer(sizes["vocab_size"])
    gen = torch.Generator().manual_seed(0)
    prompts = [
        " ".join(f"t{i}" for i in torch.randint(3, sizes["vocab_size"], (args.prompt_tokens,), generator=gen).tolist())
        for _ in range(args.prompts)
    ]
    engine = HFRolloutEngine(model, tok)

    def run(seed: int):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        batch = engine.generate(
            prompts, n_samples=args.samples, temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, seed=seed
        )
        if device == "cuda":
            torch.cuda.synchronize()
        return batch, time.perf_counter() - start

    run(0)  # warm-up: CUDA context, kernels, allocator
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timings = [run(seed) for seed in range(1, args.repeats + 1)]
    batch, seconds = min(timings, key=lambda t: t[1])
    tokens = int(batch.response_mask.sum())

    # train/inference mismatch: sampling_logp vs one full forward over prompt + response, same dtype
    rows = min(8, batch.response_ids.shape[0])
    prompt_ids = torch.tensor([batch.prompt_ids[int(g)] for g in batch.group_index[:rows]], device=device)
    ids = torch.cat([prompt_ids, batch.response_ids[:rows].to(device)], dim=1)  # (rows, P + T)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, prompt_ids.shape[1] - 1 : -1].float()  # (rows, T, V)
    recomputed = logits.log_softmax(-1).gather(-1, ids[:, prompt_ids.shape[1] :, None]).squeeze(-1).cpu()
    mask = batch.response_mask[:rows]
    diff = (recomputed - batch.sampling_logp[:rows]).abs() * mask
    result = {
        "bench": "gpu_rollout_check",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "batch": batch.response_ids.shape[0],
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "generated_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "ms_per_decode_step": round(1000 * seconds / batch.response_ids.shape[1], 2),
        "truncated_share": float(batch.truncated.float().mean()),
        "logp_mismatch_max": float(diff.max()),
        "logp_mismatch_mean": float(diff.sum() / mask.sum()),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
