#!/usr/bin/env bash
# Train on this machine with the project's .venv (make venv-gpu / venv-tpu put jax's
# accelerator build in it; the plain .venv trains on the CPU). With NUM_PROCESSES>1, simulates
# a multi-host run: that many processes on 127.0.0.1, each with DEVICES_PER_PROCESS CPU devices,
# talking through gloo. `infer` in place of CONFIG WORKDIR runs batch inference the same way
# (python -m imagebrush_jax.infer with the flags that follow; its processes share the manifest).
#
#   launch/local.sh configs/cpu_demo.py runs/demo [--config.train.batch_size=64 ...]
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local.sh configs/tiny_test.py runs/mh
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local.sh infer --workdir runs/mh \
#     --manifest rows.jsonl --output_dir out_mh
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]
   or: launch/local.sh infer --workdir RUN --manifest ROWS --output_dir OUT [infer flags]"
if [[ "${1:-}" == infer ]]; then
  shift
  PROGRAM=(-m imagebrush_jax.infer "$@")
else
  CONFIG=${1:?"$USAGE"}
  WORKDIR=${2:?"$USAGE"}
  shift 2
  PROGRAM=(-m imagebrush_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@")
fi
PY=${PY:-.venv/bin/python}
if ! command -v "$PY" >/dev/null; then
  echo "no $PY: run 'make venv' (CPU), 'make venv-gpu' or 'make venv-tpu' in $(pwd) first" >&2
  exit 2
fi
NUM_PROCESSES=${NUM_PROCESSES:-1}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
PORT=${PORT:-12355}

if [[ "$NUM_PROCESSES" == 1 ]]; then
  if [[ "$DEVICES_PER_PROCESS" != 1 ]]; then
    export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}"
  fi
  exec "$PY" "${PROGRAM[@]}"
fi

export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$NUM_PROCESSES" JAX_PROCESS_ID="$i" \
    "$PY" "${PROGRAM[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
