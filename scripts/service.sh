#!/usr/bin/env bash
# steer as a service on loopback: a Prefect server, a Prefect process worker and an MLflow UI (docs/service.md).
#
#   scripts/service.sh start [server|worker|mlflow ...]   start all three (default) or the named ones
#   scripts/service.sh deploy                             deploy deployments/prefect.yaml to the server
#   scripts/service.sh status                             what runs, with its pid, URL and log
#   scripts/service.sh stop [server|worker|mlflow ...]    stop what this script started (all by default)
#   scripts/service.sh logs server|worker|mlflow          follow a log
#   scripts/service.sh env                                the exports a shell needs to talk to these services
#
# Each process runs in its own session (process group) and leaves a pid file in $STEER_SERVICE_DIR; `stop` signals
# only the process groups named by those pid files and the flow runs the worker started (SIGTERM, then SIGKILL after
# STEER_STOP_TIMEOUT = 10 s; an interrupted training run resumes from its last checkpoint when rerun), so it never
# touches anything it did not start. (Prefect's own `prefect server start --background` is not used: it leaves the
# server writing its log into a pipe of the command that started it, which has exited, and the server dies of the
# broken pipe once it logs; seen with prefect 3.9.1.)
#
# Flow runs started by the worker log to MLflow through the MLflow server (http://127.0.0.1:$MLFLOW_PORT), never to
# its database file directly. `start server` creates the global concurrency limits steer-train-cpu and
# steer-train-cuda (STEER_TRAIN_SLOTS = 1 each): the training flow holds a slot of its device kind while it trains, so
# a second training (a manual run, the nightly ablation) queues instead of sharing the cores or the GPU.
#
# Settings (environment): STEER_SERVICE_DIR (runs/service), PREFECT_PORT (4200), MLFLOW_PORT (5000), STEER_WORK_POOL
# (steer-local), STEER_MLFLOW_STORE (sqlite:///<checkout>/runs/mlflow.db), STEER_MLFLOW_ARTIFACTS
# (<checkout>/runs/mlartifacts, for runs logged through the MLflow server), STEER_TRAIN_SLOTS (1), VENV (<checkout>/.venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
RUN_DIR="${STEER_SERVICE_DIR:-$ROOT/runs/service}"
HOST=127.0.0.1
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
POOL="${STEER_WORK_POOL:-steer-local}"
STOP_TIMEOUT="${STEER_STOP_TIMEOUT:-10}"  # seconds between SIGTERM and SIGKILL
cd "$ROOT"  # relative paths (runs/...) mean the checkout's, wherever the script is called from
PREFECT_HOME_DIR="${PREFECT_HOME:-$RUN_DIR/prefect-home}"  # profiles and server state stay out of ~/.prefect
STORE="${STEER_MLFLOW_STORE:-sqlite:///$ROOT/runs/mlflow.db}"
ARTIFACTS="${STEER_MLFLOW_ARTIFACTS:-$ROOT/runs/mlartifacts}"  # for runs logged through the MLflow server
ALL=(server mlflow worker)  # start order: the worker logs through the MLflow server
SLOTS="${STEER_TRAIN_SLOTS:-1}"

export PREFECT_API_URL="http://$HOST:$PREFECT_PORT/api"
export PREFECT_HOME="$PREFECT_HOME_DIR"
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false

url() {  # the health URL of a component
  case "$1" in
    server) echo "$PREFECT_API_URL/health" ;;
    mlflow) echo "http://$HOST:$MLFLOW_PORT/health" ;;
    worker) echo "" ;;
  esac
}

running() {  # true when the component's pid file names a live process
  local pidfile="$RUN_DIR/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

wait_http() {  # wait_http URL SECONDS NAME
  local deadline=$((SECONDS + $2))
  until curl -sf -o /dev/null "$1"; do
    if ((SECONDS > deadline)); then
      echo "$3 did not answer at $1 within $2 s; see $RUN_DIR/$3.log" >&2
      return 1
    fi
    sleep 1
  done
}

launch() {  # launch NAME COMMAND...: in its own session, output to NAME.log, pid to NAME.pid
  local name="$1"
  shift
  if running "$name"; then
    echo "$name: already running (pid $(cat "$RUN_DIR/$name.pid"))"
    return 0
  fi
  # without job control a background job is not a group leader, so setsid runs the command itself: $! is its pid
  setsid "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  echo "$name: started (pid $!, log $RUN_DIR/$name.log)"
}

start_server() {
  PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$RUN_DIR/prefect.db" \
    launch server "$VENV/bin/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  wait_http "$(url server)" 180 server
  "$VENV/bin/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 ||
    "$VENV/bin/prefect" work-pool create "$POOL" --type process >/dev/null
  local kind
  for kind in cpu cuda; do  # one training at a time per device kind (flows/train.py holds a slot while it trains)
    "$VENV/bin/prefect" gcl inspect "steer-train-$kind" >/dev/null 2>&1 ||
      "$VENV/bin/prefect" gcl create "steer-train-$kind" --limit "$SLOTS" >/dev/null
  done
  echo "server: Prefect UI and API at http://$HOST:$PREFECT_PORT (work pool $POOL, training slots $SLOTS per device kind)"
}

start_worker() {
  # the flow runs inherit this environment: one MLflow store for every run, images linked through the MLflow UI
  MLFLOW_TRACKING_URI="http://$HOST:$MLFLOW_PORT" STEER_MLFLOW_UI_URL="http://$HOST:$MLFLOW_PORT" \
    PREFECT_UI_URL="http://$HOST:$PREFECT_PORT" \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-5}" \
    launch worker "$VENV/bin/prefect" worker start --pool "$POOL" --type process
}

start_mlflow() {
  launch mlflow "$VENV/bin/mlflow" server --backend-store-uri "$STORE" --host "$HOST" --port "$MLFLOW_PORT" \
    --artifacts-destination "$ARTIFACTS" --workers 1
  wait_http "$(url mlflow)" 180 mlflow
  echo "mlflow: MLflow UI at http://$HOST:$MLFLOW_PORT on $STORE"
}

stop_one() {
  local name="$1" pidfile="$RUN_DIR/$1.pid" pid
  if [[ ! -f "$pidfile" ]]; then
    echo "$name: not started by this script"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    # the worker starts each flow run in a session of its own: note them now, end them with the worker
    local children
    children="$(pgrep -P "$pid" || true)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq "$STOP_TIMEOUT"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    for child in $children; do
      kill -KILL -- "-$child" 2>/dev/null || kill -KILL "$child" 2>/dev/null || true
    done
    echo "$name: stopped (pid $pid)"
  else
    echo "$name: was not running (stale pid $pid)"
  fi
  rm -f "$pidfile"
}

status() {
  local name health
  for name in "${ALL[@]}"; do
    if running "$name"; then
      health="$(url "$name")"
      if [[ -n "$health" ]] && ! curl -sf -o /dev/null "$health"; then health="$health (not answering yet)"; fi
      echo "$name: running, pid $(cat "$RUN_DIR/$name.pid") ${health:+$health }log $RUN_DIR/$name.log"
    else
      echo "$name: stopped"
    fi
  done
}

components() {  # the named components, or all of them
  if (($# == 0)); then echo "${ALL[@]}"; else echo "$@"; fi
}

cmd="${1:-status}"
shift || true
case "$cmd" in
  start)
    mkdir -p "$RUN_DIR" "$PREFECT_HOME" "$ROOT/runs"
    for c in $(components "$@"); do
      case "$c" in
        server) start_server ;; worker) start_worker ;; mlflow) start_mlflow ;;
        *) echo "unknown component $c: use server, worker or mlflow" >&2; exit 2 ;;
      esac
    done
    echo "export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT"
    ;;
  stop)
    order=()
    for c in $(components "$@"); do order=("$c" "${order[@]}"); done  # reverse: worker before server
    for c in "${order[@]}"; do stop_one "$c"; done
    ;;
  deploy)
    mkdir -p "$PREFECT_HOME"
    STEER_ROOT="$ROOT" "$VENV/bin/prefect" --no-prompt deploy --prefect-file deployments/prefect.yaml --all
    ;;
  status) status ;;
  logs) tail -n 50 -f "$RUN_DIR/${1:?logs needs server, worker or mlflow}.log" ;;
  env) echo "export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT" ;;
  *)
    sed -n '2,25p' "$0"
    exit 2
    ;;
esac
