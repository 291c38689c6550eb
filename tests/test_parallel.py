"""Mesh resolution, sharding rules and host batches -> global arrays (4 simulated devices)."""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from imagebrush_jax.infra import parallel


def _mesh_cfg(data, fsdp):
  return parallel.MeshOptions(data=data, fsdp=fsdp)


def _sharding_cfg(rules=(), min_size=16):
  return parallel.MeshOptions(rules=rules, min_fsdp_size=min_size)


@pytest.mark.parametrize("data,fsdp,want", [(-1, 1, (4, 1)), (2, -1, (2, 2)), (1, 4, (1, 4))])
def test_mesh_shape_fills_minus_one(data, fsdp, want):
  assert parallel.mesh_shape(_mesh_cfg(data, fsdp), 4) == want


@pytest.mark.parametrize("data,fsdp,msg", [(3, 1, "!= 4 devices"), (-1, -1, "at most one"),
                                           (0, 1, "config.mesh.data"), (3, -1, "do not divide")])
def test_mesh_shape_errors_name_the_key(data, fsdp, msg):
  with pytest.raises(ValueError, match=msg):
    parallel.mesh_shape(_mesh_cfg(data, fsdp), 4)


def test_fsdp_spec_picks_largest_divisible_dim():
  assert parallel.fsdp_spec((3, 64, 8), 2, 16) == P(None, "fsdp", None)
  assert parallel.fsdp_spec((3, 5), 2, 1) == P()  # nothing divides
  assert parallel.fsdp_spec((64,), 2, 1000) == P()  # too small
  assert parallel.fsdp_spec((64, 64), 1, 1) == P()  # no fsdp axis


def test_tree_specs_rules_first_match_wins():
  mesh = parallel.make_mesh(_mesh_cfg(2, 2))
  tree = {"enc": {"kernel": jnp.zeros((32, 64)), "bias": jnp.zeros((64,))},
          "embed": {"table": jnp.zeros((128, 16))}}
  specs = parallel.tree_specs(tree, mesh, _sharding_cfg(rules=((r"embed/", "replicate"),)))
  assert specs["enc"]["kernel"] == P(None, "fsdp")
  assert specs["enc"]["bias"] == P("fsdp")
  assert specs["embed"]["table"] == P()
  with pytest.raises(ValueError, match="unknown rule"):
    parallel.tree_specs(tree, mesh, _sharding_cfg(rules=((r"enc", "shard"),)))


def test_host_batch_to_global_splits_batch_over_all_devices():
  mesh = parallel.make_mesh(_mesh_cfg(2, 2))
  batch = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "i": np.arange(8)}
  arrays = parallel.host_batch_to_global(batch, mesh)
  assert arrays["x"].shape == (8, 3)
  np.testing.assert_array_equal(np.asarray(arrays["x"]), batch["x"])
  shard_rows = sorted(s.data.shape[0] for s in arrays["x"].addressable_shards)
  assert shard_rows == [2, 2, 2, 2]
  with pytest.raises(ValueError, match="batch_size=6"):
    parallel.local_batch_size(6)
