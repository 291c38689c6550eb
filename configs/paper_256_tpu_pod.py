"""The paper config on a TPU pod slice (v4-64 / v5p-64: 32 chips, 4 per host).

FSDP over the 4 chips of each host shards parameters and optimizer state, data parallel
over hosts; batch 288 does not split over 32 chips, so the pod runs batch 320 (10 per chip)
with the learning rate scaled linearly. Launch: launch/tpu_pod.sh (README: "Training at paper
scale", step 6).
"""
import ml_collections

from configs import paper_256


def get_config() -> ml_collections.ConfigDict:
  c = paper_256.get_config()
  c.mesh.data = -1
  c.mesh.fsdp = 4
  c.train.batch_size = 320
  # 10 per chip per step, in micro-batches of 1: a v4 chip's 32 GiB holds one (19.2 GiB per
  # device estimated at fsdp 8, docs/training.md: "Memory plan"; fsdp 4 holds 1.9 GiB more
  # state). A v5p chip (95 GiB) holds 5 (--config.train.grad_accum_steps=2).
  c.train.grad_accum_steps = 10
  c.train.learning_rate = 1e-4 * 320 / 288
  c.data.num_workers = 16
  c.train.eval_num_grids = 128
  c.train.sample_num_grids = 32
  return c
