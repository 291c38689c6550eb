"""Every train / checkpoint / mesh / sharding check of config_validation, each naming its key."""
import ml_collections
import pytest

from configs import tiny_test
from imagebrush_jax.training import config_validation


def _config() -> ml_collections.ConfigDict:
  """tiny_test without ConfigDict's type safety, so a value of any type can be tried."""
  return ml_collections.ConfigDict(tiny_test.get_config().to_dict(), type_safe=False)


def _set(config, key, value):
  *sections, name = key.split(".")
  node = config
  for section in sections:
    node = node[section]
  node[name] = value


BAD_VALUES = [
    # integers > 0 (and the type check)
    ("train.batch_size", 0, r"config\.train\.batch_size must be > 0, got 0"),
    ("train.batch_size", 8.0, r"config\.train\.batch_size must be an integer, got 8\.0"),
    ("train.batch_size", True, r"config\.train\.batch_size must be an integer, got True"),
    ("train.num_steps", -5, r"config\.train\.num_steps must be > 0, got -5"),
    ("train.grad_accum_steps", 0, r"config\.train\.grad_accum_steps must be > 0"),
    ("train.grad_accum_steps", 3,
     r"config\.train\.batch_size=8 must divide by config\.train\.grad_accum_steps=3"),
    ("train.stop_at_step", 10_000, r"config\.train\.stop_at_step must be -1 or in \(0, "
     r"num_steps=40\], got 10000"),
    ("train.stop_at_step", 0, r"config\.train\.stop_at_step must be -1 or in"),
    ("train.stop_at_step", "5", r"config\.train\.stop_at_step must be -1 or in"),
    # numbers in a range
    ("train.learning_rate", -1e-3, r"config\.train\.learning_rate must be a number in \[0\.0, "
     r"10\.0\]"),
    ("train.learning_rate", "1e-3", r"config\.train\.learning_rate must be a number"),
    ("train.lr_schedule", "linear", r"config\.train\.lr_schedule must be 'cosine' or "
     r"'constant', got 'linear'"),
    ("train.warmup_steps", -1, r"config\.train\.warmup_steps must be >= 0, got -1"),
    ("train.end_lr_fraction", 1.5, r"config\.train\.end_lr_fraction must be a number in"),
    ("train.weight_decay", -0.1, r"config\.train\.weight_decay must be a number in"),
    ("train.b1", 1.1, r"config\.train\.b1 must be a number in \[0\.0, 1\.0\]"),
    ("train.b2", -0.5, r"config\.train\.b2 must be a number in"),
    ("train.grad_clip_norm", -1.0, r"config\.train\.grad_clip_norm must be a number in"),
    ("train.ema_decay", 2.0, r"config\.train\.ema_decay must be a number in"),
    ("train.log_every", 0, r"config\.train\.log_every must be > 0"),
    ("train.stop_check_every", 0, r"config\.train\.stop_check_every must be > 0, got 0"),
    ("train.stop_check_every", 2.5, r"config\.train\.stop_check_every must be an integer"),
    ("train.eval_every", 0, r"config\.train\.eval_every must be > 0"),
    ("train.eval_num_grids", -1, r"config\.train\.eval_num_grids must be >= 0"),
    ("train.sample_num_grids", -1, r"config\.train\.sample_num_grids must be >= 0"),
    # checkpoint
    ("checkpoint.every", 0, r"config\.checkpoint\.every must be > 0"),
    ("checkpoint.keep", 0, r"config\.checkpoint\.keep must be > 0"),
    ("checkpoint.keep_every", -1, r"config\.checkpoint\.keep_every must be >= 0"),
    ("checkpoint.restore_step", -2, r"config\.checkpoint\.restore_step must be -1 \(the latest "
     r"checkpoint\) or a saved step >= 0, got -2"),
    ("checkpoint.restore_step", "20", r"config\.checkpoint\.restore_step must be -1"),
    # mesh and sharding
    ("mesh.data", 0, r"config\.mesh\.data must be a positive integer or -1, got 0"),
    ("mesh.fsdp", -2, r"config\.mesh\.fsdp must be a positive integer or -1, got -2"),
    ("mesh.fsdp", 1.5, r"config\.mesh\.fsdp must be a positive integer or -1"),
    ("sharding.rules", (("kernel", "fsdp"), ("bias", "shard")),
     r"config\.sharding\.rules\[1\] must be \(regex, 'fsdp' \| 'replicate'\), got "
     r"\('bias', 'shard'\)"),
    ("sharding.rules", (("kernel",),), r"config\.sharding\.rules\[0\] must be"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_value_names_the_key(key, value, message):
  config = _config()
  _set(config, key, value)
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate(config)


@pytest.mark.parametrize("key", ["train.batch_size", "train.stop_check_every",
                                 "checkpoint.restore_step", "mesh.data", "sharding.rules"])
def test_missing_key_is_named(key):
  config = _config()
  *sections, name = key.split(".")
  node = config
  for section in sections:
    node = node[section]
  del node[name]
  with pytest.raises(config_validation.ConfigError, match=rf"config\.{key} is missing"):
    config_validation.validate(config)


def test_shipped_values_and_edge_values_pass():
  config = _config()
  config_validation.validate(config)
  for key, value in [("train.stop_at_step", 40), ("train.warmup_steps", 0),
                     ("train.grad_clip_norm", 0.0), ("checkpoint.keep_every", 0),
                     ("checkpoint.restore_step", 0), ("checkpoint.restore_step", 20),
                     ("mesh.data", -1), ("train.stop_check_every", 1),
                     ("sharding.rules", (("pos_embed", "replicate"), ("kernel", "fsdp")))]:
    _set(config, key, value)
  config_validation.validate(config)
