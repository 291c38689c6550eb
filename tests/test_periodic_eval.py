"""Evaluation during training on any device count: eval batches padded to a multiple of the
devices, the padding left out of every metric."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from imagebrush_jax.training import periodic_eval
from imagebrush_jax.diffusion import losses
from imagebrush_jax.diffusion import schedules
import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pad_rows_marks_the_padding():
  batch = {"grid": np.arange(6)[:, None] * np.ones((6, 3)), "task_id": np.arange(6)}
  padded = periodic_eval.pad_rows(batch, 8)
  assert padded["grid"].shape == (8, 3) and list(padded["task_id"]) == [0, 1, 2, 3, 4, 5, 5, 5]
  np.testing.assert_array_equal(padded["weight"], [1] * 6 + [0] * 2)
  assert periodic_eval.pad_rows(batch, 3)["weight"].sum() == 6  # nothing to pad


def test_zero_weight_rows_do_not_change_the_loss():
  """A grid of weight 0 (padding) changes neither the loss nor its metrics, whatever it holds."""
  schedule = schedules.make_schedule(ml_collections.ConfigDict(dict(
      schedule="linear", num_timesteps=100, beta_start=1e-4, beta_end=0.02,
      prediction_type="epsilon")))
  x0 = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  mask = jnp.zeros((4, 8, 8, 1)).at[:, 4:, 4:].set(1.0)
  denoise = lambda x_t, t: 0.5 * x_t
  weight = jnp.array([1.0, 1.0, 1.0, 0.0])
  run = lambda x: losses.diffusion_loss(denoise, schedule, x, mask, jax.random.key(1),
                                        known_cell_weight=0.1, example_weight=weight)
  loss, metrics = run(x0)
  loss2, metrics2 = run(x0.at[3].set(100.0))  # the padding row holds anything
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  np.testing.assert_allclose(metrics["mse_target"], metrics2["mse_target"], rtol=1e-6)
  unweighted, _ = losses.diffusion_loss(denoise, schedule, x0, mask, jax.random.key(1),
                                        known_cell_weight=0.1)
  assert not np.isclose(loss, unweighted)  # the weight did leave a row out


EVALUATE_ON_EIGHT_DEVICES = """
import sys
import jax
from configs import tiny_test
from etils import epath
from imagebrush_jax.infra import parallel
from imagebrush_jax.training import metric_writers
from imagebrush_jax.training import periodic_eval
from imagebrush_jax.training import train_state
from imagebrush_jax.training import objectives
from imagebrush_jax.training import options as training_options
from imagebrush_jax.data import options as data_options
config = tiny_test.get_config()
config.data.eval_batch_size = 6
for key in ("eval_num_grids", "sample_num_grids", "accuracy_num_grids"):
  config.train[key] = 6
assert jax.device_count() == 8
mesh_options = parallel.MeshOptions.from_config(config)
mesh = parallel.make_mesh(mesh_options)
task = objectives.imagebrush_from_config(config)
_, shardings = train_state.state_shapes_and_shardings(task, mesh, mesh_options,
                                                      jax.random.key(0))
state = train_state.init_sharded_state(task, shardings, jax.random.key(0))
workdir = epath.Path(sys.argv[1])
writer = metric_writers.MetricWriter(str(workdir / "tensorboard"))
data = data_options.from_config(config)
train = training_options.TrainOptions.from_config(config.train)
periodic_eval.Evaluator(data, train, task, mesh, workdir, writer).run(1, state)
writer.close()
"""


def test_eval_batch_of_six_on_eight_devices(tmp_path):
  """paper_256_tpu_pod evaluates batches of 16 on 32 chips: the same here, 6 grids on 8."""
  env = {**os.environ, "PYTHONPATH": ROOT,
         "XLA_FLAGS": conftest.with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=8)}
  proc = subprocess.run([sys.executable, "-c", EVALUATE_ON_EIGHT_DEVICES, str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(tmp_path, "eval_metrics.jsonl")) as f:
    record = json.loads(f.readline())
  assert record["step"] == 1 and np.isfinite(record["heldout_loss"])
  assert 0.0 <= record["accuracy"] <= 1.0 and np.isfinite(record["psnr"])
  # Edit success with its 95% interval over the grids it is measured on (6 here: wide).
  assert record["edit_success_low"] <= record["edit_success"] <= record["edit_success_high"]
  assert record["edit_success_high"] - record["edit_success_low"] > 0.3
  sheet = np.asarray(Image.open(os.path.join(tmp_path, "samples", "step_0000001.png")))
  assert sheet.shape[0] == 6 * 8 + 5 * 2  # six 8-pixel rows with 2-pixel gaps: no padding rows
