"""The config is checked once, where a program starts, into typed options: every check of the
train / checkpoint / mesh sections (training/options.py) and of the model / diffusion /
sampling sections (core/options.py) names its key, and the shipped configs all pass."""
import importlib

import ml_collections
import pytest

from configs import tiny_test
from imagebrush_jax import train
from imagebrush_jax.core import options as core_options
from imagebrush_jax.infra import config_checks
from imagebrush_jax.training import options as training_options

SHIPPED = ("default", "cpu_demo", "objects", "objects_dit", "tiny_test", "latent_tiny", "paper_256",
           "paper_256_from_sd", "paper_256_tpu_pod")


def _config() -> ml_collections.ConfigDict:
  """tiny_test without ConfigDict's type safety, so a value of any type can be tried."""
  return ml_collections.ConfigDict(tiny_test.get_config().to_dict(), type_safe=False)


def _set(config, key, value):
  *sections, name = key.split(".")
  node = config
  for section in sections:
    node = node[section]
  node[name] = value


def _parse(config):
  """What a training program checks before it builds anything."""
  training_options.LoopOptions.from_config(config)
  core_options.ImageBrushSpec.from_config(config)


BAD_VALUES = [
    # integers (and the type check)
    ("train.batch_size", 0, r"config\.train\.batch_size must be >= 1, got 0"),
    ("train.batch_size", 8.0, r"config\.train\.batch_size must be an integer, got 8\.0"),
    ("train.batch_size", True, r"config\.train\.batch_size must be an integer, got True"),
    ("train.num_steps", -5, r"config\.train\.num_steps must be >= 1, got -5"),
    ("train.grad_accum_steps", 0, r"config\.train\.grad_accum_steps must be >= 1"),
    ("train.grad_accum_steps", 3,
     r"config\.train\.batch_size=8 must divide by config\.train\.grad_accum_steps=3"),
    ("train.stop_at_step", 10_000, r"config\.train\.stop_at_step must be -1 or in \(0, "
     r"num_steps=40\], got 10000"),
    ("train.stop_at_step", 0, r"config\.train\.stop_at_step must be -1 or in"),
    ("train.stop_at_step", "5", r"config\.train\.stop_at_step must be -1 or in"),
    # numbers in a range
    ("train.learning_rate", -1e-3, r"config\.train\.learning_rate must be in \[0\.0, 10\.0\]"),
    ("train.learning_rate", "1e-3", r"config\.train\.learning_rate must be a number"),
    ("train.lr_schedule", "linear", r"config\.train\.lr_schedule must be one of cosine, "
     r"constant; got 'linear'"),
    ("train.warmup_steps", -1, r"config\.train\.warmup_steps must be >= 0, got -1"),
    ("train.end_lr_fraction", 1.5, r"config\.train\.end_lr_fraction must be in"),
    ("train.weight_decay", -0.1, r"config\.train\.weight_decay must be in"),
    ("train.b1", 1.1, r"config\.train\.b1 must be in \[0\.0, 1\.0\]"),
    ("train.b2", -0.5, r"config\.train\.b2 must be in"),
    ("train.grad_clip_norm", -1.0, r"config\.train\.grad_clip_norm must be in"),
    ("train.ema_decay", 2.0, r"config\.train\.ema_decay must be in"),
    ("train.ema_warmup", 1, r"config\.train\.ema_warmup must be True or False, got 1"),
    ("train.log_every", 0, r"config\.train\.log_every must be >= 1"),
    ("train.stop_check_every", 0, r"config\.train\.stop_check_every must be >= 1, got 0"),
    ("train.stop_check_every", 2.5, r"config\.train\.stop_check_every must be an integer"),
    ("train.eval_every", 0, r"config\.train\.eval_every must be >= 1"),
    ("train.eval_num_grids", -1, r"config\.train\.eval_num_grids must be >= 0"),
    ("train.sample_num_grids", -1, r"config\.train\.sample_num_grids must be >= 0"),
    ("train.profile_steps", (5, 3), r"config\.train\.profile_steps must be \(\) or \(start, "
     r"stop\)"),
    # checkpoint
    ("checkpoint.every", 0, r"config\.checkpoint\.every must be >= 1"),
    ("checkpoint.keep", 0, r"config\.checkpoint\.keep must be >= 1"),
    ("checkpoint.keep_every", -1, r"config\.checkpoint\.keep_every must be >= 0"),
    ("checkpoint.restore_step", -2, r"config\.checkpoint\.restore_step must be -1 \(the latest "
     r"checkpoint\) or a saved step >= 0, got -2"),
    ("checkpoint.restore_step", "20", r"config\.checkpoint\.restore_step must be -1"),
    # mesh and sharding
    ("mesh.data", 0, r"config\.mesh\.data must be a positive integer or -1, got 0"),
    ("mesh.fsdp", -2, r"config\.mesh\.fsdp must be a positive integer or -1, got -2"),
    ("mesh.fsdp", 1.5, r"config\.mesh\.fsdp must be a positive integer or -1"),
    ("mesh.fsdp", -1, r"config\.mesh: at most one of data/fsdp may be -1"),
    ("sharding.rules", (("kernel", "fsdp"), ("bias", "shard")),
     r"config\.sharding\.rules\[1\] must be \(regex, 'fsdp' \| 'replicate'\), got "
     r"\('bias', 'shard'\)"),
    ("sharding.rules", (("kernel",),), r"config\.sharding\.rules\[0\] must be"),
    ("sharding.rules", (("ker(nel", "fsdp"),), r"config\.sharding\.rules\[0\] = 'ker\(nel' is "
     r"no regular expression"),
    # model
    ("model.cfg_drop_rate", 1.5, r"config\.model\.cfg_drop_rate must be in \[0\.0, 1\.0\]"),
    ("model.dtype", "float64", r"config\.model\.dtype must be one of float32, bfloat16"),
    ("model.target_cell_fill", "noise", r"config\.model\.target_cell_fill must be one of"),
    ("model.variant", "fancy", r"config\.model\.variant must be '' \(the paper's model\) or "
     r"one of"),
    ("model.unet.widths", (8, 16), r"config\.model\.unet\.widths is not an option here"),
    ("model.unet.channels", (16, 16, 16, 16, 16),
     r"config\.data\.tile_size = 8 gives 8-cell tiles in diffusion space, not divisible by 16"),
    ("model.prompt.vit.patch_size", 3, r"config\.data\.tile_size = 8 \(the prompt encoder's "
     r"image size\) is not divisible by config\.model\.prompt\.vit\.patch_size = 3"),
    ("model.prompt.mixer.heads", 2, r"config\.model\.prompt\.mixer\.heads is not an option"),
    ("model.latent_factor", 3, r"config\.model\.latent_factor = 3 needs "
     r"config\.model\.autoencoder"),
    # diffusion and sampling
    ("diffusion.schedule", "sigmoid", r"config\.diffusion\.schedule must be one of linear, "
     r"scaled_linear, cosine; got 'sigmoid'"),
    ("diffusion.prediction_type", "noise", r"config\.diffusion\.prediction_type must be one of"),
    ("diffusion.beta_end", 0.0001, r"config\.diffusion\.beta_start = 0\.00085 must be below "
     r"config\.diffusion\.beta_end = 0\.0001"),
    ("diffusion.edit_region_weight", -1.0, r"config\.diffusion\.edit_region_weight must be in"),
    ("diffusion.residual_target", "yes", r"config\.diffusion\.residual_target must be True or "
     r"False"),
    ("sampling.num_steps", 2000, r"config\.sampling\.num_steps must be in \[1, 1000\], got 2000"),
    ("sampling.spacing", "uniform", r"config\.sampling\.spacing must be one of leading, "
     r"trailing, linspace"),
    ("sampling.eta", 2.0, r"config\.sampling\.eta must be in \[0\.0, 1\.0\]"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_value_names_the_key(key, value, message):
  config = _config()
  _set(config, key, value)
  with pytest.raises(config_checks.ConfigError, match=message):
    _parse(config)


@pytest.mark.parametrize("key", ["train.batch_size", "train.stop_check_every",
                                 "checkpoint.restore_step", "mesh.data", "sharding.rules",
                                 "model.box_drop_rate", "diffusion.schedule", "sampling.eta"])
def test_missing_key_is_named(key):
  config = _config()
  *sections, name = key.split(".")
  node = config
  for section in sections:
    node = node[section]
  del node[name]
  with pytest.raises(config_checks.MissingKeyError, match=rf"^config\.{key} is missing$"):
    _parse(config)


def test_shipped_values_and_edge_values_pass():
  config = _config()
  _parse(config)
  for key, value in [("train.stop_at_step", 40), ("train.warmup_steps", 0),
                     ("train.grad_clip_norm", 0.0), ("checkpoint.keep_every", 0),
                     ("checkpoint.restore_step", 0), ("checkpoint.restore_step", 20),
                     ("mesh.data", -1), ("train.stop_check_every", 1),
                     ("train.profile_steps", (0, 1)), ("sampling.num_steps", 1000),
                     ("sharding.rules", (("pos_embed", "replicate"), ("kernel", "fsdp")))]:
    _set(config, key, value)
  options = training_options.LoopOptions.from_config(config)
  assert options.train.last_step == 40 and options.checkpoint.restore_step == 20
  assert options.mesh.rules == (("pos_embed", "replicate"), ("kernel", "fsdp"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_parses_into_frozen_options(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  options = training_options.LoopOptions.from_config(config)
  spec = core_options.ImageBrushSpec.from_config(config)
  assert spec.grid.tile_size == config.data.tile_size
  assert dict(spec.model.unet) == {k: tuple(v) if isinstance(v, list) else v
                                   for k, v in config.model.unet.to_dict().items()}
  assert spec.sampling.num_steps == config.sampling.num_steps
  assert options.train.batch_size == config.train.batch_size
  with pytest.raises(Exception):  # frozen: a parsed value cannot drift from the checks
    spec.sampling.num_steps = 1
  with pytest.raises(Exception):
    spec.model.unet.channels = (1,)


def test_a_bad_value_stops_the_program_before_the_workdir_is_made(tmp_path):
  config = tiny_test.get_config()
  config.sampling.spacing = "uniform"
  workdir = tmp_path / "run"
  with pytest.raises(config_checks.ConfigError, match=r"config\.sampling\.spacing"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
