#!/usr/bin/env bash
# Multi-GPU, multi-node training: run this once on every host (one process per host,
# driving all of that host's GPUs). The coordinator comes from the environment:
#
#   COORDINATOR_ADDRESS=10.0.0.1:12355 NUM_HOSTS=4 HOST_INDEX=<0..3> \
#     launch/gpu_multinode.sh configs/paper_256.py /shared/runs/paper \
#     --config.model.autoencoder.params=/shared/sd_vae.safetensors [--config.key=value ...]
#
# Under SLURM (srun --ntasks-per-node=1) NUM_HOSTS and HOST_INDEX default to SLURM_NTASKS
# and SLURM_PROCID, and COORDINATOR_ADDRESS to the first node of the allocation.
# WORKDIR must be a folder every host can reach (NFS, Lustre or a gs:// bucket).
# Runs the project's .venv (make venv-gpu installs jax's CUDA build into it); PY overrides.
#
# Batch inference on every host's GPUs, `infer` in place of CONFIG WORKDIR (the flags of
# python -m imagebrush_jax.infer follow; each host edits its share of the manifest's lines, and
# the run, manifest, images and OUT must be reachable from every host):
#
#   COORDINATOR_ADDRESS=10.0.0.1:12355 NUM_HOSTS=4 HOST_INDEX=<0..3> \
#     launch/gpu_multinode.sh infer --workdir /shared/runs/paper --manifest /shared/rows.jsonl \
#     --output_dir /shared/out
set -euo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: launch/gpu_multinode.sh CONFIG WORKDIR [--config.key=value ...]
   or: launch/gpu_multinode.sh infer --workdir RUN --manifest ROWS --output_dir OUT [infer flags]"
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
  echo "no $PY: run 'make venv-gpu' in $(pwd) first (README: Installing for GPUs and TPUs)" >&2
  exit 2
fi

NUM_HOSTS=${NUM_HOSTS:-${SLURM_NTASKS:-1}}
HOST_INDEX=${HOST_INDEX:-${SLURM_PROCID:-0}}
if [[ -z "${COORDINATOR_ADDRESS:-}" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
  COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1):${COORDINATOR_PORT:-12355}"
fi

# Sensible XLA GPU defaults; override by exporting XLA_FLAGS before calling.
export XLA_FLAGS=${XLA_FLAGS:-"--xla_gpu_enable_latency_hiding_scheduler=true"}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

if [[ "$NUM_HOSTS" -gt 1 ]]; then
  : "${COORDINATOR_ADDRESS:?set COORDINATOR_ADDRESS=host:port of host 0}"
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR_ADDRESS"
  export JAX_NUM_PROCESSES="$NUM_HOSTS"
  export JAX_PROCESS_ID="$HOST_INDEX"
fi
echo "host $HOST_INDEX of $NUM_HOSTS, coordinator ${COORDINATOR_ADDRESS:-none}" >&2
exec "$PY" "${PROGRAM[@]}"
