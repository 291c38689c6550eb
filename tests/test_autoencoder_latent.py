"""ImageBrush in latent space: per-cell encoding, config checks, a frozen autoencoder in training,
decoded samples."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import latent_tiny
from configs import paper_256
from configs import tiny_test
from imagebrush_jax.core import latent
from imagebrush_jax.training import train_state
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.data import pipeline
from imagebrush_jax.training import objectives
from tests.test_autoencoder import SMALL
from tests.test_autoencoder import random_params


@pytest.fixture(scope="module")
def ae_file(tmp_path_factory):
  """A small f=2, 4-channel autoencoder file with random (non-degenerate) weights."""
  path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
  autoencoder_params.save(path, random_params(SMALL), SMALL, source="test")
  return str(path)


def latent_config(ae_file):
  c = tiny_test.get_config()
  c.model.latent_factor = 2
  c.model.in_channels = 4
  c.model.autoencoder = ml_collections.ConfigDict(dict(
      params=ae_file, scaling_factor=0.0, sample_posterior=True, dtype="float32"))
  c.sampling.clip_x0 = False
  c.train.batch_size = 4
  return c


def test_cells_are_encoded_independently(ae_file):
  space, params = latent.load(latent_config(ae_file))
  assert space.factor == 2 and space.channels == 4 and space.scaling_factor == 0.5
  params = jax.tree.map(jnp.asarray, params)
  grid = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  encode = jax.jit(space.encode_grid)
  z = encode(params, grid)
  assert z.shape == (2, 8, 8, 4)
  # The bottom-right latent cell is the encoding of the bottom-right pixel cell alone ...
  alone = jax.jit(space.encode)(params, grid[:, 8:, 8:])
  np.testing.assert_allclose(z[:, 4:, 4:], alone, atol=1e-5)
  # ... and blanking it (as at inference) changes no other cell's latents.
  z_blank = encode(params, grid.at[:, 8:, 8:].set(0.0))
  np.testing.assert_array_equal(z_blank[:, :4], z[:, :4])
  np.testing.assert_array_equal(z_blank[:, 4:, :4], z[:, 4:, :4])
  assert float(jnp.abs(z_blank[:, 4:, 4:] - z[:, 4:, 4:]).max()) > 1e-3
  # A posterior sample differs from the mean only when asked for.
  sampled = encode(params, grid, jax.random.key(0))
  assert float(jnp.abs(sampled - z).max()) > 1e-3


@pytest.mark.parametrize("change, message", [
    (dict(latent_factor=4), "latent_factor = 4, but the autoencoder .* downsamples by 2"),
    (dict(in_channels=3), "in_channels = 3, but the autoencoder .* has 4 latent channels"),
    (dict(params=""), "config.model.autoencoder.params must name"),
    (dict(params="/nonexistent/ae.safetensors"), "/nonexistent/ae.safetensors does not exist"),
    (dict(autoencoder=None), "needs config.model.autoencoder"),
    (dict(ae_dtype="float16"),
     "config.model.autoencoder.dtype must be one of float32, bfloat16; got .float16."),
])
def test_config_errors_name_the_key(ae_file, change, message):
  config = latent_config(ae_file)
  for key, value in change.items():
    if key == "autoencoder":
      del config.model["autoencoder"]
    elif key == "params":
      config.model.autoencoder.params = value
    elif key == "ae_dtype":
      config.model.autoencoder.dtype = value
    else:
      config.model[key] = value
  with pytest.raises(ValueError, match=message):
    latent.from_config(config)


def test_pixel_configs_have_no_latent_space_and_paper_is_latent():
  assert latent.from_config(tiny_test.get_config()) is None
  paper = paper_256.get_config()
  assert (paper.model.latent_factor, paper.model.in_channels) == (8, 4)
  assert paper.model.autoencoder.scaling_factor == 0.18215
  tiny = latent_tiny.get_config()
  assert tiny.data.tile_size % tiny.model.latent_factor == 0


def test_training_keeps_the_autoencoder_frozen_and_samples_decode(ae_file, monkeypatch):
  config = latent_config(ae_file)
  config.model.unet.channels = (16,)  # one level: a quicker compilation
  config.model.unet.attention = ("self+cross",)
  config.model.unet.mid_attention = "none"
  config.train.warmup_steps = 0
  config.train.learning_rate = 1e-2
  frozen = autoencoder_params.load(ae_file)[0]
  reads = []
  real_load = autoencoder_params.load
  monkeypatch.setattr(autoencoder_params, "load", lambda p: reads.append(p) or real_load(p))
  loaded = latent.load(config)
  task = objectives.imagebrush_from_config(config, loaded)
  state = jax.jit(task.init_state)(jax.random.key(0))
  # The file is read once; the saved config rebuilds the space without it.
  saved = latent.record_arch(config, loaded[0])
  assert latent.from_config(saved) == loaded[0] and reads == [ae_file]
  assert set(state["params"]) == {"unet", "prompt_encoder", latent.PARAMS_KEY}
  # The UNet input: 4-channel latents x_t and the known grid, and the mask.
  assert state["params"]["unet"]["conv_in"]["kernel"].shape[2] == 4 + 4 + 1
  batch = pipeline.make_eval_batches(config, num_grids=4, seed=5, batch_size=4)[0]
  batch = {k: batch[k] for k in ("grid", "mask", "box", "task_id")}
  step = jax.jit(train_state.make_train_step(task))
  before = state["params"]["unet"]["conv_in"]["kernel"]
  for _ in range(2):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  assert not np.allclose(state["params"]["unet"]["conv_in"]["kernel"], before)
  got = jax.tree.map(np.asarray, state["params"][latent.PARAMS_KEY])
  jax.tree.map(np.testing.assert_array_equal, got, frozen)
  # The EMA of a constant is the constant, up to float rounding.
  ema = jax.tree.map(np.asarray, state["ema_params"][latent.PARAMS_KEY])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ema, frozen)

  out = task.objective.sample_fn(state["ema_params"], batch, jax.random.key(1), num_steps=2,
                                 guidance_scale=1.0)
  assert out["grid"].shape == (4, 8, 8, 4) and out["target_latent"].shape == (4, 4, 4, 4)
  assert out["target"].shape == (4, 8, 8, 3)
  assert float(jnp.abs(out["target"]).max()) <= 1.0
  assert reads == [ae_file]  # the loss, the train step and the sampler read nothing more
  space = latent.from_config(config)
  decoded = space.decode(jax.tree.map(jnp.asarray, frozen), out["target_latent"])
  np.testing.assert_allclose(out["target"], decoded, atol=1e-5)
