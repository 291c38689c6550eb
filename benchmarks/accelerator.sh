#!/usr/bin/env bash
# The accelerator figures of docs/performance.md ("Accelerators") in one run of a few
# minutes: the paper step's MFU, memory and compile time (benchmarks/train_mfu.py) and guided
# 50-step edits per second (benchmarks/sampler_throughput.py), at configs/paper_256.py in
# bfloat16 on random weights (no data or weight files needed). JSON lines go to OUT_DIR.
#
#   benchmarks/accelerator.sh [--config.key=value ...]     # overrides reach both benchmarks
#
# BATCH_PER_DEVICE (6: one micro-batch of configs/paper_256.py on an 80 GB GPU, the memory plan's
# setting: benchmarks/memory_plan.py), REMAT_POLICY (nothing_saveable),
# ATTENTION_IMPL (auto: cuDNN's fused attention through jax.nn.dot_product_attention on GPUs),
# SAMPLER_BATCH (16), TRAIN_STEPS (10 timed steps), SAMPLER_STEPS (50 DDIM steps), CONFIG and
# OUT_DIR (runs/accelerator) change the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-configs/paper_256.py}
OUT_DIR=${OUT_DIR:-runs/accelerator}
mkdir -p "$OUT_DIR"
"$PY" -m imagebrush_jax.hardware | tee "$OUT_DIR/device.txt"
"$PY" benchmarks/train_mfu.py --config "$CONFIG" --batch_per_device "${BATCH_PER_DEVICE:-6}" \
  --remat_policy "${REMAT_POLICY:-nothing_saveable}" --attention_impl "${ATTENTION_IMPL:-auto}" \
  --steps "${TRAIN_STEPS:-10}" --config.train.grad_accum_steps=1 "$@" | tee "$OUT_DIR/train_mfu.log"
"$PY" benchmarks/sampler_throughput.py --config "$CONFIG" --batch "${SAMPLER_BATCH:-16}" \
  --steps "${SAMPLER_STEPS:-50}" --repeats 2 "$@" | tee "$OUT_DIR/sampler_throughput.log"
tail -n 1 "$OUT_DIR/train_mfu.log" > "$OUT_DIR/train_mfu.json"
tail -n 1 "$OUT_DIR/sampler_throughput.log" > "$OUT_DIR/sampler_throughput.json"
