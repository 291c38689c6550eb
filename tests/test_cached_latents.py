"""Cached latents (config.data.cached_latents): a data set built with --autoencoder stores each
pair's posterior moments; a train step from them equals one that encodes the same pixels with
the same noise; what cannot be exact from them is refused, one line naming the keys or files.
The README's commands (build, train, resume, evaluate) run in tests/test_readme_cached_latents.py.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import tiny_test
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.core import latent
from imagebrush_jax.data import latent_cache
from imagebrush_jax.data import options as data_options
from imagebrush_jax.data import pipeline
from imagebrush_jax.data.prepare import moments
from imagebrush_jax.data.prepare import writer
from imagebrush_jax.training import objectives
from tests.test_autoencoder import SMALL
from tests.test_autoencoder import random_params


def _pairs(root: str) -> None:
  """Two tasks of 4 random pairs (names no registered task has: centred crop, no flip)."""
  rng = np.random.default_rng(0)
  for task, fn in (("mirror", lambda x: x[:, ::-1]), ("neg", lambda x: 255 - x)):
    os.makedirs(os.path.join(root, task))
    for i in range(4):
      before = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
      Image.fromarray(before).save(os.path.join(root, task, f"p{i}_before.png"))
      Image.fromarray(np.ascontiguousarray(fn(before))).save(
          os.path.join(root, task, f"p{i}_after.png"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Two small f = 2 autoencoder files, and a pairs folder built at 8-pixel tiles with the
  first's moments in float32 and in bfloat16."""
  tmp = tmp_path_factory.mktemp("cached")
  ae_a, ae_b = str(tmp / "ae_a.safetensors"), str(tmp / "ae_b.safetensors")
  autoencoder_params.save(ae_a, random_params(SMALL, seed=0), SMALL, source="test")
  autoencoder_params.save(ae_b, random_params(SMALL, seed=1), SMALL, source="test")
  _pairs(str(tmp / "pairs"))
  built = {}
  for dtype in ("float32", "bfloat16"):
    out = str(tmp / f"built_{dtype}")
    writer.build(writer.BuildOptions(source="folder", input=str(tmp / "pairs"), output=out,
                                     tile_size=8, crop_scale=1.25, image_format="png"))
    summary = moments.write(out, ae_a, dtype=dtype, batch_pairs=3)
    assert summary["moments_pairs"] == 8 and summary["moments_shape"] == [2, 4, 4, 8]
    built[dtype] = out
  return dict(ae_a=ae_a, ae_b=ae_b, built=built, tmp=tmp)


def _config(data_dir: str, autoencoder: str) -> ml_collections.ConfigDict:
  c = tiny_test.get_config()
  c.data.source = "tfds"
  c.data.tfds.dir = data_dir
  c.data.train_tasks = ("mirror", "neg")
  c.data.heldout_tasks = ()
  c.data.eval_fraction = 0.0
  c.data.cached_latents = True
  c.model.latent_factor = 2
  c.model.in_channels = 4
  c.model.unet.channels = (16,)  # one level: a quicker compilation
  c.model.unet.attention = ("self+cross",)
  c.model.unet.mid_attention = "none"
  c.model.autoencoder = ml_collections.ConfigDict(dict(
      params=autoencoder, scaling_factor=0.0, sample_posterior=True, dtype="float32"))
  c.sampling.clip_x0 = False
  c.train.batch_size = 4
  return c


def _batch(config) -> dict:
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  return next(it)


def test_a_step_from_cached_moments_equals_one_that_encodes_the_pixels(files):
  config = _config(files["built"]["float32"], files["ae_a"])
  batch = _batch(config)
  assert batch["moments"].shape == (4, 8, 8, 8) and batch["moments"].dtype == np.float32
  loaded = latent.load(config)
  space, ae_params = loaded
  # The batch's moments are those of its own pixel cells (the pipeline's tiles are the cached).
  cells = latent.grid_cells(grid_lib.pixels_to_unit(jnp.asarray(batch["grid"])))
  fresh = latent.cells_to_grid(jax.jit(space.moments)(ae_params, cells), 4)
  np.testing.assert_allclose(batch["moments"], fresh, atol=2e-5)

  task = objectives.imagebrush_from_config(config, loaded)
  params = jax.jit(task.init_state)(jax.random.key(0))["params"]
  pixels_only = {k: v for k, v in batch.items() if k != "moments"}

  @jax.jit
  def step(params, batch, rng):  # the step's loss and gradients (train=True: posterior samples)
    return jax.value_and_grad(lambda p: task.loss_fn(p, batch, rng, True)[0])(params)

  for seed in (0, 1):
    rng = jax.random.key(seed)
    loss_cached, grads_cached = step(params, batch, rng)
    loss_encoded, grads_encoded = step(params, pixels_only, rng)
    np.testing.assert_allclose(loss_cached, loss_encoded, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads_cached, grads_encoded)
  # The cached step has no encoder in it: XLA counts fewer FLOPs.
  flops = lambda b: step.lower(params, b, rng).compile().cost_analysis()["flops"]
  assert flops(batch) < flops(pixels_only)

  # Stored in bfloat16 (the default) the moments are rounded: the same step to bfloat16's
  # precision, and the same posterior noise (a mean/variance change, not a new draw).
  config16 = _config(files["built"]["bfloat16"], files["ae_a"])
  batch16 = _batch(config16)
  np.testing.assert_array_equal(batch16["grid"], batch["grid"])
  assert batch16["moments"].dtype.name == "bfloat16"
  np.testing.assert_allclose(batch16["moments"].astype(np.float32), batch["moments"],
                             rtol=2**-8, atol=1e-6)
  loss16, _ = step(params, batch16, jax.random.key(0))
  loss32, _ = step(params, batch, jax.random.key(0))
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)


def test_another_autoencoder_or_tile_geometry_is_refused_naming_both(files):
  built = files["built"]["bfloat16"]
  config = _config(built, files["ae_b"])
  with pytest.raises(ValueError) as e:
    _batch(config)
  message = str(e.value)
  assert "\n" not in message
  assert files["ae_b"] in message and files["ae_a"] in message and built in message
  # Moments of another file into the same data set: refused, naming both files.
  with pytest.raises(ValueError, match="already caches") as e:
    moments.write(built, files["ae_b"])
  assert files["ae_a"] in str(e.value) and files["ae_b"] in str(e.value)
  # Another tile size (its images resized to another render): refused naming the keys.
  config = _config(built, files["ae_a"])
  config.data.crop_scale = 1.0
  with pytest.raises(ValueError, match="config.data.tile_size and config.data.crop_scale"):
    _batch(config)
  # A data set without moments.
  bare = str(files["tmp"] / "bare")
  writer.build(writer.BuildOptions(source="folder", input=str(files["tmp"] / "pairs"),
                                   output=bare, tile_size=8, crop_scale=1.25))
  with pytest.raises(ValueError, match="has no cached latents"):
    _batch(_config(bare, files["ae_a"]))


def test_a_crop_or_flip_the_cache_cannot_reproduce_is_refused_at_parse(files):
  config = _config(files["built"]["bfloat16"], files["ae_a"])
  data_options.from_config(config)  # unregistered tasks: the centred tile, never flipped
  config.data.train_tasks = ("move",)  # cropped anywhere, never flipped
  with pytest.raises(ValueError, match=r"'move' is cropped at random with "
                                       r"config.data.crop_scale > 1; set config.data.crop_scale"):
    data_options.from_config(config)
  config.data.crop_scale = 1.0
  data_options.from_config(config)
  config.data.train_tasks = ("move", "hflip")  # flipped, centred
  with pytest.raises(ValueError, match=r"'hflip' is flipped with config.data.flip_prob = 0.5"):
    data_options.from_config(config)
  config.data.flip_prob = 0.0
  data_options.from_config(config)
  def source(c):
    c.data.source, c.data.folder.root, c.data.tfds.dir = "folder", str(files["tmp"]), ""

  def pixels(c):
    c.model.latent_factor = 1

  def no_file(c):
    c.model.autoencoder.params = ""

  for edit, match in ((source, "config.data.source = 'tfds'"),
                      (pixels, "latent-space model"),
                      (no_file, "needs config.model.autoencoder.params")):
    bad = _config(files["built"]["bfloat16"], files["ae_a"])
    edit(bad)
    with pytest.raises(ValueError, match=match):
      data_options.from_config(bad)


def test_an_interrupted_moment_pass_finishes_and_keeps_its_shards(files, tmp_path):
  out = str(tmp_path / "built")
  writer.build(writer.BuildOptions(source="folder", input=str(files["tmp"] / "pairs"),
                                   output=out, tile_size=8, crop_scale=1.25, shard_pairs=3))
  moments.write(out, files["ae_a"], batch_pairs=2)
  names = sorted(n for n in os.listdir(out) if n.startswith(latent_cache.NAME))
  assert len(names) == 3  # as the pixel shards: 3 + 3 + 2 pairs
  read = lambda: {n: open(os.path.join(out, n), "rb").read() for n in names}
  before = read()
  # As if stopped before the end: the marker of the pass, no latents.json, one shard missing.
  os.remove(os.path.join(out, latent_cache.META_FILE))
  os.remove(os.path.join(out, names[1]))
  with open(os.path.join(out, moments.PARTIAL_FILE), "w") as f:
    f.write('{"sha256": "%s", "dtype": "bfloat16"}' % latent_cache.sha256_file(files["ae_a"]))
  assert latent_cache.read_meta(out) is None
  kept = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in (names[0], names[2])}
  moments.write(out, files["ae_a"], batch_pairs=2)
  assert read() == before and latent_cache.read_meta(out)["sha256"] == latent_cache.sha256_file(
      files["ae_a"])
  assert kept == {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in kept}  # not redone
  assert not os.path.exists(os.path.join(out, moments.PARTIAL_FILE))


def test_train_benchmark_counts_the_flops_a_cache_saves(tmp_path):
  """benchmarks/train_mfu.py --cached_latents --compile_only at tiny size: the step on cached
  moments and the step that encodes, compiled side by side; the cache removes the encoder's
  FLOPs from XLA's count and from the analytic one."""
  import readme_plan  # pylint: disable=g-import-not-at-top
  from tests.test_perf import _run  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.models import autoencoder as ae  # pylint: disable=g-import-not-at-top
  arch = ae.AutoencoderConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                              norm_num_groups=4)
  ae_file = str(tmp_path / "ae.safetensors")
  autoencoder_params.save(ae_file, random_params(arch), arch, source="test")
  result = _run(["benchmarks/train_mfu.py", "--config", "configs/latent_tiny.py",
                 "--batch_per_device", "2", "--cached_latents", "--compile_only",
                 *readme_plan.TINY_LATENT, f"--config.model.autoencoder.params={ae_file}"])
  cached = result["cached_latents"]
  assert result["compile_only"] and cached["xla_flops_per_step_encoding"] == result[
      "xla_flops_per_step"]
  encode = result["flops_parts_forward"]["autoencoder_encode"]
  assert cached["analytic_flops_per_step"] == pytest.approx(
      cached["analytic_flops_per_step_encoding"] - encode)
  assert cached["xla_flops_per_step"] < cached["xla_flops_per_step_encoding"]
  # XLA's count drops by about the encoder's analytic FLOPs.
  saved = cached["xla_flops_per_step_encoding"] - cached["xla_flops_per_step"]
  assert saved == pytest.approx(encode, rel=0.15), (saved, encode)
