"""Build the embedded tiny policy with another spec seed into a folder, as a stand-in for another machine's build.

The default policy is built and warm-started on each machine, and its numbers differ from machine to machine
(docs/results.md, 4e). A setting claimed to hold "on every build" is checked on builds with other seeds:

    PYTHONPATH=. .venv/bin/python scripts/build_tiny_policy.py --seed 1 --out runs/builds/tiny-s1   # ~1.5-2.5 min
    steer train --preset collapse --set model.name_or_path=runs/builds/tiny-s1
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from steer.models.tiny import TinyPolicySpec, build_tiny_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True, help="TinyPolicySpec.seed: initialisation, data order, eval")
    p.add_argument("--out", type=Path, required=True, help="folder to write the Hugging Face model into")
    p.add_argument("--threads", type=int, default=1, help="torch threads while building (default 1)")
    args = p.parse_args()
    metrics = build_tiny_policy(replace(TinyPolicySpec(), seed=args.seed), args.out, num_threads=args.threads)
    print(json.dumps({k: v for k, v in metrics.items() if k != "spec"}, indent=2))


if __name__ == "__main__":
    main()
