"""Weight-sync seconds per step, file vs shared memory, with the CPU vLLM worker (``make vllm-venv``).

For each policy one worker serves the trainer's model; each round pushes the (slightly changed) weights once by each
path, alternating, and reads the engine's timings: the trainer-side write (safetensors file / copy into the block),
the worker's in-place reload, the probe check, and the whole ``update_weights`` call. Medians over the rounds and
the file/memory ratio; the machine's load average is printed because 2 shared cores make the spread wide.

    .venv/bin/python bench/bench_weight_sync.py [--policies tiny smollm2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEYS = {
    "write": "timing/vllm_weight_write",
    "load": "timing/vllm_weight_load",
    "sync": "timing/vllm_weight_sync",
}


def bench(policy: str, rounds: int) -> dict:
    import torch

    from steer.models.loading import load_policy, resolve_policy
    from steer.rollout.vllm_client import VLLMRolloutEngine
    from steer.runtime import cache_dir

    model, tokenizer = load_policy(resolve_policy(policy, cache_dir()), dtype=torch.float32)
    params = sum(p.numel() for p in model.parameters())
    engine = VLLMRolloutEngine(model, tokenizer, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    runs: dict[str, dict[str, list[float]]] = {
        m: {k: [] for k in [*KEYS, "probe", "probe_again"]} for m in ("file", "memory")
    }
    try:
        start = engine.timings["timing/vllm_worker_start"]
        for r in range(rounds):
            for mode in ("file", "memory") if r % 2 == 0 else ("memory", "file"):
                with torch.no_grad():
                    next(model.parameters()).add_(1e-4)  # a real change each time
                engine.weight_sync = mode
                engine.update_weights(model)
                for k, name in KEYS.items():
                    runs[mode][k].append(engine.timings[name])
                runs[mode]["probe"].append(engine.sync_metrics["timing/weight_sync_probe"])
                # the same check again, weights unchanged: what the probe itself costs, without any one-off work
                # vLLM does on its first forward after a reload
                runs[mode]["probe_again"].append(engine.check_sync(model)["timing/weight_sync_probe"])
                diff = engine.sync_metrics["rollout/sync_probe_max_abs_diff"]
    finally:
        engine.close()
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in runs.items()}
    return {
        "policy": policy,
        "parameters": params,
        "worker_start_s": start,
        "median_s": med,
        "range_s": {m: {k: [min(v), max(v)] for k, v in d.items()} for m, d in runs.items()},
        "sync_without_probe_ratio_file_over_memory": (med["file"]["write"] + med["file"]["load"])
        / (med["memory"]["write"] + med["memory"]["load"]),
        "last_probe_max_abs_diff": diff,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=["tiny", "smollm2"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for policy in args.policies:
        result = bench(policy, args.rounds)
        print(json.dumps(result, indent=1))
        m = result["median_s"]
        print(
            f"{policy} ({result['parameters'] / 1e6:.1f} M params): sync without probe, file "
            f"{m['file']['write'] + m['file']['load']:.3f} s (write {m['file']['write']:.3f} + load "
            f"{m['file']['load']:.3f}), memory {m['memory']['write'] + m['memory']['load']:.3f} s (write "
            f"{m['memory']['write']:.3f} + load {m['memory']['load']:.3f}); ratio "
            f"{result['sync_without_probe_ratio_file_over_memory']:.2f}x; probe {m['memory']['probe']:.3f} s, "
            f"again {m['memory']['probe_again']:.3f} s"
        )


if __name__ == "__main__":
    main()
