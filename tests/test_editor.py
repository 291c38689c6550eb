"""The batched editor: its sampler settings checks and its bounded cache of compiled samplers."""
import gc
import math
import weakref

import jax
import numpy as np
import pytest

from imagebrush_jax.inference import run_loading
from imagebrush_jax.core import grid as grid_lib
from imagebrush_jax.inference import editor as editor_lib

from _tiny_run import tiny_workdir  # pylint: disable=g-bad-import-order

LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # once per jit cache miss


@pytest.fixture(scope="module")
def run():
  return run_loading.load_run(tiny_workdir())


def _batch(editor):
  tile = np.zeros((editor.tile_size, editor.tile_size, 3), np.uint8)
  grid = grid_lib.assemble_grid([(tile, tile)] * editor.num_examples, tile)
  return {k: v[None] for k, v in grid.items()}


@pytest.mark.parametrize("seed, message", [
    (2**63, "seed must be in [0, 2**63), got 9223372036854775808"),
    (-1, "seed must be in [0, 2**63), got -1"),
    (1.5, "seed must be an integer in [0, 2**63), got 1.5"),
    ("7", "seed must be an integer in [0, 2**63), got '7'"),
])
def test_check_seed_refuses_seeds_outside_the_key_range(seed, message):
  with pytest.raises(ValueError) as e:
    editor_lib.check_seed(seed)
  assert str(e.value) == message
  assert editor_lib.check_seed(2**63 - 1) == 2**63 - 1 and editor_lib.check_seed(0) == 0


@pytest.mark.parametrize("settings, message", [
    (dict(num_steps=0), "steps must be between 1 and 1000 (the run's diffusion.num_timesteps), "
                        "got 0"),
    (dict(num_steps=1001), "steps must be between 1 and 1000 (the run's "
                           "diffusion.num_timesteps), got 1001"),
    (dict(num_steps=2.5), "steps must be an integer, got 2.5"),
    (dict(guidance_scale=math.nan), "guidance must be a finite number, got nan"),
    (dict(guidance_scale=-math.inf), "guidance must be a finite number, got -inf"),
    (dict(guidance_scale="x"), "guidance must be a number, got 'x'"),
    (dict(eta=math.inf), "eta must be a finite number, got inf"),
])
def test_bad_sampler_settings_are_one_line_errors(run, settings, message):
  with pytest.raises(ValueError) as e:
    editor_lib.Editor(run, batch_size=1, **settings)
  assert str(e.value) == message
  editor = editor_lib.Editor(run, batch_size=1)
  with pytest.raises(ValueError) as e:
    editor.edit_grids(_batch(editor), jax.random.key(0), **settings)
  assert str(e.value) == message
  assert editor.check_settings(num_steps=1000, guidance_scale=1.0, eta=0) == dict(
      num_steps=1000, guidance_scale=1.0, eta=0.0)


def test_compiled_samplers_are_a_bounded_lru_cache(run):
  editor = editor_lib.Editor(run, batch_size=1, max_samplers=2)
  batch, key = _batch(editor), jax.random.key(0)
  lowered = []

  def on_event(event, _, **kwargs):
    if event == LOWERING_EVENT and "_sample" in str(kwargs.get("fun_name")):
      lowered.append(event)

  def edit(steps):
    editor.edit_grids(batch, key, num_steps=steps, guidance_scale=2.0)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    edit(1)
    edit(3)
    assert editor.sampler_settings == [(1, True), (3, True)]
    assert len(lowered) == 2 and editor.compilations == 2
    evicted = weakref.ref(editor._samplers[(3, True)])  # pylint: disable=protected-access
    edit(1)  # held: no new compilation, and now the most recently used
    assert len(lowered) == 2 and editor.sampler_settings == [(3, True), (1, True)]
    edit(4)  # a third setting drops the least recently used (3 steps) and its compilation
    assert editor.sampler_settings == [(1, True), (4, True)]
    assert len(lowered) == 3 and editor.compilations == 2
    gc.collect()
    assert evicted() is None
    edit(1)
    edit(1)
    assert len(lowered) == 3
    edit(3)  # dropped earlier: compiled again
    assert len(lowered) == 4 and editor.compilations == 2
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  with pytest.raises(ValueError, match="max_samplers must be positive"):
    editor_lib.Editor(run, batch_size=1, max_samplers=0)
