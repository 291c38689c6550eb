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

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import parallel


def _ckpt_cfg():
  return ml_collections.ConfigDict({"keep": 2, "keep_every": 0, "async_save": True})


def _sharding_cfg():
  return parallel.MeshOptions(rules=(), min_fsdp_size=16)


def _state(width=8):
  params = {"dense": {"kernel": jnp.arange(4 * width, dtype=jnp.float32).reshape(4, width),
                      "bias": jnp.ones((width,))}}
  opt = optax.adamw(1e-3)
  return {"step": jnp.array(3, jnp.int32), "params": params, "opt_state": opt.init(params)}


def _iterator():
  ds = grain.MapDataset.range(100).shuffle(seed=1).map(lambda x: x * 2).batch(4)
  return iter(ds.to_iter_dataset())


def _placed(state, mesh_shape):
  mesh = parallel.make_mesh(parallel.MeshOptions(*mesh_shape))
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


def _truncate(step_dir, data_only: bool) -> None:
  """Cuts files to one byte: the array data (ocdbt's d/ folders) only, or every file."""
  for root, _, names in os.walk(step_dir):
    if data_only and os.path.basename(root) != "d":
      continue
    for name in names:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 0:
        with open(path, "r+b") as f:
          f.truncate(1)


@pytest.mark.parametrize("data_only", [True, False], ids=["data-files", "all-files"])
def test_damaged_checkpoint_gets_a_clear_error(tmp_path, data_only):
  """Array data truncated under intact metadata, or metadata too: refused naming the step and
  the restore_step of the checkpoint before it, which still restores."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  ckpt.save(1, _state(), None, ml_collections.ConfigDict())
  ckpt.save(2, _state(), None, ml_collections.ConfigDict())
  ckpt.close()
  _truncate(tmp_path / "checkpoints" / "2" / "state", data_only)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  with pytest.raises(ckpt_lib.CheckpointCorruptError) as err:
    ckpt.restore(2, jax.eval_shape(_state), None)
  text = str(err.value)
  assert f"checkpoint step 2 in {tmp_path / 'checkpoints' / '2'} is damaged" in text
  assert "pass --config.checkpoint.restore_step=1" in text
  restored = ckpt.restore(1, jax.eval_shape(_state), None)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(_state()))
  ckpt.close()


def test_damaged_first_checkpoint_says_there_is_none_before(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  ckpt.save(1, _state(), None, ml_collections.ConfigDict())
  ckpt.close()
  _truncate(tmp_path / "checkpoints" / "1" / "state", data_only=True)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), _ckpt_cfg())
  with pytest.raises(ckpt_lib.CheckpointCorruptError,
                     match="(?s)checkpoint step 1 .* no earlier checkpoint: move .* away"):
    ckpt.restore(1, jax.eval_shape(_state), None)
  ckpt.close()


def test_set_aside_after_moves_newer_steps_and_keeps_earlier_copies(tmp_path):
  config = _ckpt_cfg()
  config.keep = 5
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), config)
  for step in (1, 2, 3):
    ckpt.save(step, _state(), None, ml_collections.ConfigDict(), force=True)
  ckpt.wait()
  assert ckpt.set_aside_after(1) == [2, 3]
  assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
  ckpt.save(2, _state(), None, ml_collections.ConfigDict(), force=True)  # trained again
  ckpt.wait()
  assert ckpt.set_aside_after(1) == [2]
  assert sorted(os.listdir(tmp_path / "checkpoints_set_aside")) == ["2", "2.1", "3"]
  assert ckpt.set_aside_after(1) == []
  ckpt.close()
