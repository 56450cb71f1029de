#!/usr/bin/env bash
# Issue 6's collapse study (steer study collapse) for longer than 2 cores allow, on a lent GPU machine's 16 CPU cores
# (the GPU stays idle: CUDA_VISIBLE_DEVICES is empty, so the numerics are the CPU's as on a laptop). One process per
# arm and seed, each an ablation of its own in runs/device-collapse/<arm>-s<seed>, then one merged report.
#
# Carry (both git-ignored): .whlstudy (or WHEELS=<folder>) (Python 3.12 wheels of prefect, mlflow, transformers 5.24, ... that the
# machine's image lacks) and .devcarry/policy (the tiny policy built here, so both machines start from the same
# weights). Writes $OUT/report.tgz (PNGs, summary.csv/md, runs.csv, metrics.csv), $OUT/logs.tgz, $OUT/summary.md.
#
#   STEPS=250 RUN_TIMEOUT=480 bash bench/device_collapse.sh
# One run step took ~2.45 s there with 12 runs at once. Keep RUN_TIMEOUT + the install (~20 s) + the merge (~30 s)
# well inside the device call's limit: a call killed at its limit returns nothing from $OUT. docs/results.md's
# Study 2 ran with RUN_TIMEOUT=520, which stopped the runs at steps 210-215.
# A quick local check of the script itself (no install, one short run):
#   SKIP_INSTALL=1 SITE=/nonexistent PY=.venv/bin/python ARMS=grpo SEEDS=0 STEPS=2 OUT=/tmp/dc bash bench/device_collapse.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
if [ -z "${SKIP_INSTALL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" ${WHEELS:-.whlstudy}/*.whl \
    || exit 1
fi
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
  PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=300 \
  PREFECT_LOGGING_LEVEL=WARNING STEER_CACHE_DIR=/tmp/steer-cache CUDA_VISIBLE_DEVICES=
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-300}
ARMS=${ARMS:-grpo steer_0.7 clip_cov entropy_bonus}
SEEDS=${SEEDS:-0 1 2}
ROOT=runs/device-collapse
mkdir -p "$ROOT"
nproc
$PY -c "import torch, transformers, prefect, mlflow; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'prefect', prefect.__version__, 'mlflow', mlflow.__version__)" || exit 1
start=$(date +%s)
for arm in $ARMS; do
  for seed in $SEEDS; do
    PREFECT_HOME=/tmp/prefect-$arm-$seed timeout "${RUN_TIMEOUT:-480}" $PY -m steer_cli.main study collapse \
      --arms "$arm" --seeds "$seed" --steps "$STEPS" --output-dir "$ROOT/$arm-s$seed" \
      --set model.name_or_path=.devcarry/policy >"$ROOT-$arm-s$seed.log" 2>&1 &
  done
done
wait
echo "runs took $(( $(date +%s) - start )) s"
for f in "$ROOT"-*.log; do echo "== $f"; tail -n 3 "$f"; done
$PY scripts/merge_ablations.py "$ROOT"/* --out "$OUT/report" --arms "$(echo $ARMS | tr ' ' ,)"
cp "$OUT/report/summary.md" "$OUT/summary.md"
tar czf "$OUT/report.tgz" -C "$OUT" report && rm -rf "$OUT/report"
tar czf "$OUT/logs.tgz" "$ROOT"-*.log
