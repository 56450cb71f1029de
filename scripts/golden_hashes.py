"""Hashes of seeded ``steer train`` runs: per-step metric values and final weights, one pair per algorithm.

Runs the real command line in-process (``steer train --preset tiny --steps 5 --algorithm A --output-dir D``), then
hashes

- ``metrics``: every MLflow metric of the run except ``timing/*``, ``perf/*`` and ``system/*`` (wall-clock, load),
  one hash per key over its history, each point as ``step value`` with the value's exact float (``float.hex``);
- ``weights``: the last checkpoint's safetensors tensors in sorted name order (name, dtype, shape, raw bytes).

    python scripts/golden_hashes.py                    # the tiny preset as is (B=32, G=8): minutes per algorithm
    python scripts/golden_hashes.py --small --model DIR --threads 1 --write tests/golden/train_hashes.json

The golden test (tests/test_golden.py) runs the small batch on the test-size policy (tests/policies.py) with one
torch thread and compares against the stored file, so a refactor that changes seeded results in any bit fails it.

Bits are reproducible on one kind of machine, not across kinds: the policy is warm-started on the machine, and
torch's CPU kernels differ by instruction set. The file therefore records the ``fingerprint`` of the machine it was
made on, and the test runs only where the fingerprint matches (elsewhere it skips and says how to record anew: run
this script with ``--write`` on the commit before the change, then compare after it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ALGORITHMS = ("steer", "grpo", "clip_cov", "fork_tokens")
STEPS = 5
# a small batch keeping every layer of the loop (2 mini-batches x 2 micro-batches, eval at 0 and at the end)
SMALL = [
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=8",
    "optim.mini_batch_prompts=2",
    "optim.micro_batch_size=4",
    "eval.every=0",
    "eval.max_new_tokens=8",
    "data.heldout_size=16",
    "data.train_size=200",
    "checkpoint_every=0",
    "tracking.log_model=false",  # seconds per run, and not part of the hashes
    "tracking.system_metrics=false",
]
WALL_CLOCK = ("timing/", "perf/", "system/")  # wall clock and the machine's load


def _main_of_cli():
    try:  # the tree before the CLI moved out of the library first: its steer_cli may resolve to an installed copy
        from steer.cli import main
    except ImportError:
        from steer_cli.main import main
    return main


def metrics_hashes(out: Path) -> dict[str, str]:
    """One hash per metric key (so a metric added later leaves the others comparable), over its whole history."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text().strip()
    keys = sorted(k for k in client.get_run(run_id).data.metrics if not k.startswith(WALL_CLOCK))
    hashes = {}
    for key in keys:
        h = hashlib.sha256()
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step):
            h.update(f"{m.step} {float(m.value).hex()}\n".encode())
        hashes[key] = h.hexdigest()
    return hashes


def weights_hash(out: Path) -> str:
    from safetensors.torch import load_file

    from steer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out / "checkpoints")
    h = hashlib.sha256()
    for shard in sorted(ckpt.glob("*.safetensors")):
        tensors = load_file(shard)
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
            h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint(threads: int | None) -> dict[str, str]:
    """What seeded bits depend on besides the code: torch's version, the CPU and its kernel level, the threads."""
    import platform

    import torch

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(threads),
    }


def run_hashes(
    algorithm: str, root: Path, *, small: bool, model: str | None = None, threads: int | None = None
) -> dict[str, str]:
    """Train ``algorithm`` through ``steer train`` into ``root/algorithm`` and hash what it left. ``model`` and
    ``threads`` override ``model.name_or_path`` and ``model.num_threads``."""
    out = root / algorithm
    argv = ["train", "--preset", "tiny", "--steps", str(STEPS), "--algorithm", algorithm, "--output-dir", str(out)]
    pairs = list(SMALL if small else [])
    pairs += [f"model.name_or_path={model}"] if model else []
    pairs += [f"model.num_threads={threads}"] if threads else []
    for pair in pairs:
        argv += ["--set", pair]
    rc = _main_of_cli()(argv)
    if rc:
        raise SystemExit(f"steer train {' '.join(argv)} exited {rc}")
    return {"metrics": metrics_hashes(out), "weights": weights_hash(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="the golden test's small batch instead of the full preset")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    p.add_argument("--model", help="model.name_or_path (default: the preset's, the embedded tiny policy)")
    p.add_argument("--threads", type=int, help="model.num_threads (default: the preset's)")
    p.add_argument("--write", help="write the hashes to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {
            a: run_hashes(a, Path(tmp), small=args.small, model=args.model, threads=args.threads)
            for a in args.algorithms
        }
    record = {"steps": STEPS, "small": args.small, "fingerprint": fingerprint(args.threads), "hashes": hashes}
    text = json.dumps(record, indent=2) + "\n"
    print(text)
    if args.write:
        Path(args.write).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
