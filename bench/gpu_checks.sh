#!/usr/bin/env bash
# The GPU checks, run as one script on a lent H100/H200 (see the closing notes for the numbers):
#   1. HF-backend sampling throughput, random 0.5B Qwen2-shaped model in bf16, batch 64;
#   2. bf16 update throughput and STEER's overhead over GRPO on a ~0.4B model at V = 151,936.
# Expects pydantic wheels in .whl (the device image lacks it); writes logs to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 200 python3 bench/gpu_rollout_check.py 2>&1 | tee "${OUT:-/tmp}/rollout.txt"
timeout 280 python3 bench/bench_update.py --device cuda --dtype bf16 --hidden 1024 --layers 12 --vocab 151936 \
  --n 64 --prompt-len 256 --t 512 --reps 5 2>&1 | tee "${OUT:-/tmp}/update.txt"
