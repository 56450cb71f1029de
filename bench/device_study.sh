#!/usr/bin/env bash
# A study (`steer study collapse`, issue 6, or `steer study baselines`, issue 15's 11 arms) for longer than 2 cores
# allow, on a lent GPU machine: one process per arm and seed, all at once, each an ablation of its own in
# runs/device-<study>/<arm>-s<seed>, then one merged report. By default the GPU stays idle (CUDA_VISIBLE_DEVICES is
# empty, so the numerics are the CPU's as on a laptop); DEVICE=cuda puts every run on the GPU, and SCALE=1 runs the
# larger shape issue 15 asks for where the GPU allows it (128 prompts x 16 samples per rollout, 24 new tokens: 4x the
# responses of collapse.yaml, the same 32 optimizer steps per rollout).
#
#   STUDY=baselines DEVICE=cuda SCALE=1 STEPS=200 SEEDS=0 RUN_TIMEOUT=480 bash bench/device_study.sh
#
# Carry (both git-ignored; 64 MiB in all): .whlstudy (or WHEELS=<folder>) (Python 3.12 wheels of prefect, mlflow, transformers 5.24, ... that the
# machine's image lacks) and .devcarry/policy (the tiny policy built here, so both machines start from the same
# weights). Writes $OUT/report.tgz (PNGs, summary.csv/md, runs.csv, metrics.csv), $OUT/logs.tgz, $OUT/summary.md.
#
#   STEPS=250 RUN_TIMEOUT=480 bash bench/device_study.sh
# One run step took ~2.45 s there with 12 runs at once. Keep RUN_TIMEOUT + the install (~20 s) + the merge (~30 s)
# well inside the device call's limit: a call killed at its limit returns nothing from $OUT. docs/results.md's
# Study 2 ran with RUN_TIMEOUT=520, which stopped the runs at steps 210-215.
# A quick local check of the script itself (no install, one short run):
#   SKIP_INSTALL=1 SITE=/nonexistent PY=.venv/bin/python ARMS=grpo SEEDS=0 STEPS=2 OUT=/tmp/dc bash bench/device_study.sh
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
STUDY=${STUDY:-collapse}
case "$STUDY" in
  collapse) DEFAULT_ARMS="grpo steer_0.7 clip_cov entropy_bonus" ;;
  baselines) DEFAULT_ARMS="grpo grpo_clip_higher steer_paper steer_released steer_robust clip_cov_7b kl_cov entropy_bonus adaptive_entropy stare gspo" ;;
  *) echo "STUDY=$STUDY: choose collapse or baselines" >&2; exit 2 ;;
esac
ARMS=${ARMS:-$DEFAULT_ARMS}
SEEDS=${SEEDS:-0 1 2}
ROOT=runs/device-$STUDY
EXTRA=()
if [ "${DEVICE:-cpu}" = cuda ]; then
  unset CUDA_VISIBLE_DEVICES
  EXTRA+=(--set model.device=cuda)
fi
if [ -n "${SCALE:-}" ]; then
  EXTRA+=(--set rollout.prompts_per_step=128 --set rollout.samples_per_prompt=16 --set rollout.max_new_tokens=24
    --set optim.mini_batch_prompts=8 --set optim.micro_batch_size=64)
fi
mkdir -p "$ROOT"
nproc
$PY -c "import torch, transformers, prefect, mlflow; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'prefect', prefect.__version__, 'mlflow', mlflow.__version__)" || exit 1
start=$(date +%s)
for arm in $ARMS; do
  for seed in $SEEDS; do
    PREFECT_HOME=/tmp/prefect-$arm-$seed timeout "${RUN_TIMEOUT:-480}" $PY -m steer_cli.main study "$STUDY" \
      --arms "$arm" --seeds "$seed" --steps "$STEPS" --output-dir "$ROOT/$arm-s$seed" \
      --set model.name_or_path=.devcarry/policy "${EXTRA[@]}" >"$ROOT-$arm-s$seed.log" 2>&1 &
  done
done
wait
echo "runs took $(( $(date +%s) - start )) s"
for f in "$ROOT"-*.log; do echo "== $f"; tail -n 3 "$f"; done
$PY scripts/merge_ablations.py "$ROOT"/* --out "$OUT/report" --arms "$(echo $ARMS | tr ' ' ,)"
cp "$OUT/report/summary.md" "$OUT/summary.md"
tar czf "$OUT/report.tgz" -C "$OUT" report && rm -rf "$OUT/report"
tar czf "$OUT/logs.tgz" "$ROOT"-*.log
