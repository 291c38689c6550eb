#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice (v4 / v5p): create the slice, copy this checkout to
# every worker, install, and start the trainer on all workers at once. jax finds the
# other workers by itself on TPU VMs (IMAGEBRUSH_DISTRIBUTED=1 -> jax.distributed.initialize()).
#
#   TPU_NAME=ib-pod ZONE=us-central2-b ACCELERATOR=v4-64 WORKDIR=gs://my-bucket/runs/paper \
#     launch/tpu_pod.sh configs/paper_256_tpu_pod.py \
#     --config.model.autoencoder.params=/data/sd_vae.safetensors [--config.key=value ...]
#
# Steps can be run one at a time: STEPS="create copy install train" (the default), or e.g.
# STEPS=train to restart training on an existing slice (it resumes from the latest complete
# checkpoint in WORKDIR). WORKDIR, needed only when train is among the steps, holds
# checkpoints, logs and samples (process 0 writes the shared files); the training data must be
# on every worker's disk or a gcsfuse mount.
# Credentials come from your gcloud login / the VM's service account; none are written here.
#
# Batch inference on every worker, `infer` in place of CONFIG (the flags of
# python -m imagebrush_jax.infer follow; WORKDIR is not used: give --workdir or --params). Each
# worker edits its share of the manifest's lines into --output_dir; the run, the manifest, its
# images and the output folder must be in a bucket (or on every worker's disk). The step that
# starts it is `infer` (log: infer.log on each worker):
#
#   STEPS=infer TPU_NAME=ib-pod ZONE=us-central2-b launch/tpu_pod.sh infer \
#     --workdir gs://my-bucket/runs/paper --manifest gs://my-bucket/rows.jsonl \
#     --output_dir gs://my-bucket/edits
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == infer ]]; then
  shift
  PROGRAM=infer
  : "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
else
  CONFIG=${1:?"usage: launch/tpu_pod.sh CONFIG [--config.key=value ...]
   or: launch/tpu_pod.sh infer --workdir RUN --manifest ROWS --output_dir OUT [infer flags]"}
  shift
  PROGRAM=train
  : "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
fi
ACCELERATOR=${ACCELERATOR:-v4-64}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
STEPS=${STEPS:-"create copy install $PROGRAM"}
REMOTE_DIR=${REMOTE_DIR:-imagebrush_jax}
# The workdir is needed by the train step only (create / copy / install can run without it).
if [[ "$PROGRAM" == train && " $STEPS " == *" train "* ]]; then
  : "${WORKDIR:?set WORKDIR (a gs:// path)}"
fi

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

for step in $STEPS; do
  case "$step" in
    create)
      gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
        --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot} ;;
    copy)
      tar --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/imagebrush_src.tgz .
      gcloud compute tpus tpu-vm scp /tmp/imagebrush_src.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" \
        $PROJECT_FLAG --worker=all
      ssh_all "mkdir -p $REMOTE_DIR && tar -xzf /tmp/imagebrush_src.tgz -C $REMOTE_DIR" ;;
    install)
      # The project's .venv with jax's TPU build, pinned to requirements.txt's jax (make venv-tpu).
      ssh_all "cd $REMOTE_DIR && make venv-tpu" ;;
    train|infer)
      if [[ "$step" != "$PROGRAM" ]]; then
        echo "step '$step' does not go with $PROGRAM: 'launch/tpu_pod.sh CONFIG ...' trains," \
          "'launch/tpu_pod.sh infer FLAGS' runs batch inference" >&2
        exit 2
      fi
      # Quote the overrides / flags so they reach the remote shell intact (none: no argument).
      overrides=""
      if (($#)); then overrides=$(printf ' %q' "$@"); fi
      if [[ "$PROGRAM" == train ]]; then
        args="--config $CONFIG --workdir $WORKDIR$overrides"
      else
        args="${overrides# }"
      fi
      ssh_all "cd $REMOTE_DIR && IMAGEBRUSH_DISTRIBUTED=1 nohup .venv/bin/python -m imagebrush_jax.$PROGRAM \
        $args > $PROGRAM.log 2>&1 &
        echo started on \$(hostname)" ;;
    *) echo "unknown step '$step' (create, copy, install, train, infer)" >&2; exit 2 ;;
  esac
done
