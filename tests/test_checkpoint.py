"""Orbax checkpoints: exact round trip of state + grain iterator, resharding on restore,
clear refusals of mismatched or damaged checkpoints."""
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from imagebrush_jax import checkpoint as ckpt_lib
from imagebrush_jax import parallel


def _ckpt_cfg():
  return ml_collections.ConfigDict({"keep": 2, "keep_every": 0, "async_save": True})


def _sharding_cfg():
  return ml_collections.ConfigDict({"rules": (), "min_fsdp_size": 16})


def _state(width=8):
  params = {"dense": {"kernel": jnp.arange(4 * width, dtype=jnp.float32).reshape(4, width),
                      "bias": jnp.ones((width,))}}
  opt = optax.adamw(1e-3)
  return {"step": jnp.array(3, jnp.int32), "params": params, "opt_state": opt.init(params)}


def _iterator():
  ds = grain.MapDataset.range(100).shuffle(seed=1).map(lambda x: x * 2).batch(4)
  return iter(ds.to_iter_dataset())


def _placed(state, mesh_shape):
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(zip(("data", "fsdp"), mesh_shape))))
  shardings = parallel.tree_shardings(state, mesh, _sharding_cfg())
  return jax.device_put(state, shardings), shardings


def test_round_trip_state_and_data_iterator_onto_another_mesh(tmp_path):
  config = ml_collections.ConfigDict({"model": {"width": 8}})
  state, _ = _placed(_state(), (1, 4))  # kernel split 4 ways along fsdp
  it = _iterator()
  for _ in range(3):
    next(it)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  ckpt.save(3, state, it, config)
  expected_next = [next(it) for _ in range(2)]
  ckpt.close()

  # Restore on a different mesh (data=4, fsdp=1): everything replicated there.
  target_state, shardings = _placed(_state(), (4, 1))
  abstract = ckpt_lib.abstract_with_shardings(target_state, shardings)
  fresh = _iterator()
  ckpt2 = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  assert ckpt2.latest_step() == 3
  restored = ckpt2.restore(3, abstract, fresh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  assert restored["params"]["dense"]["kernel"].sharding == shardings["params"]["dense"]["kernel"]
  for want in expected_next:
    np.testing.assert_array_equal(next(fresh), want)
  assert ckpt2.saved_config(3) == {"model": {"width": 8}}
  ckpt2.close()


def test_relative_workdir_saves_and_loads(tmp_path, monkeypatch):
  # `make demo` passes runs/demo: orbax's async array writes need an absolute path.
  monkeypatch.chdir(tmp_path)
  ckpt = ckpt_lib.Checkpointer("runs/rel", _ckpt_cfg())
  ckpt.save(5, _state(), None, ml_collections.ConfigDict(), force=True)
  ckpt.close()
  assert os.path.isdir(tmp_path / "runs" / "rel" / "checkpoints" / "5")
  step, arrays = ckpt_lib.load_arrays("runs/rel")
  assert step == 5
  np.testing.assert_array_equal(arrays["params"]["dense"]["kernel"],
                                np.asarray(_state()["params"]["dense"]["kernel"]))


def test_keeps_last_n(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  for step in (1, 2, 3, 4):
    ckpt.save(step, _state(), None, ml_collections.ConfigDict(), force=True)
  ckpt.close()
  assert ckpt.all_steps() == [3, 4]


def test_mismatched_checkpoint_is_refused_with_what_differs(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  ckpt.save(1, _state(width=8), None, ml_collections.ConfigDict())
  ckpt.wait()
  abstract = jax.eval_shape(lambda: _state(width=16))
  with pytest.raises(ckpt_lib.CheckpointMismatchError) as err:
    ckpt.restore(1, abstract, None)
  text = str(err.value)
  assert "does not fit the config" in text
  assert "params/dense/kernel (4, 8) vs (4, 16)" in text
  ckpt.close()


def test_damaged_checkpoint_gets_a_clear_error(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  ckpt.save(1, _state(), None, ml_collections.ConfigDict())
  ckpt.close()
  state_dir = tmp_path / "checkpoints" / "1" / "state"
  for root, _, names in os.walk(state_dir):  # truncate every data file
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0:
        with open(path, "r+b") as f:
          f.truncate(1)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=str(tmp_path / "checkpoints" / "1")):
    ckpt.restore(1, jax.eval_shape(_state), None)
