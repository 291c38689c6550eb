"""Device mesh, sharding rules, multi-host start-up and host-to-global batches.

One code path for 1 CPU, a multi-GPU node and a TPU pod slice: a Mesh with axes
('data', 'fsdp'); the batch is split over both axes; large kernels are split along
'fsdp' (ZeRO-3 style) and everything else is replicated. Rules come from the config.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Sequence

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from imagebrush_jax.infra import config_checks as checks

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device
SHARDING_KINDS = ("fsdp", "replicate")


@dataclasses.dataclass(frozen=True)
class MeshOptions:
  """config.mesh and config.sharding: the ('data', 'fsdp') mesh sizes (-1: the remaining
  devices) and the parameter sharding rules ((regex, 'fsdp' | 'replicate'), first match wins;
  unmatched arrays of at least min_fsdp_size elements use 'fsdp')."""
  data: int = -1
  fsdp: int = 1
  rules: tuple[tuple[str, str], ...] = ()
  min_fsdp_size: int = 2**14

  @classmethod
  def from_config(cls, config: Any) -> MeshOptions:
    sizes = {}
    for axis in MESH_AXES:
      value = checks.get(config.mesh, axis, "config.mesh")
      if isinstance(value, bool) or not isinstance(value, int) or (value != -1 and value < 1):
        raise checks.ConfigError(f"config.mesh.{axis} must be a positive integer or -1, got "
                                 f"{value!r}")
      sizes[axis] = value
    if list(sizes.values()).count(-1) > 1:
      raise checks.ConfigError("config.mesh: at most one of data/fsdp may be -1")
    rules = []
    for i, rule in enumerate(checks.get(config.sharding, "rules", "config.sharding")):
      if (isinstance(rule, str) or len(rule) != 2 or not isinstance(rule[0], str)
          or rule[1] not in SHARDING_KINDS):
        raise checks.ConfigError(f"config.sharding.rules[{i}] must be (regex, 'fsdp' | "
                                 f"'replicate'), got {rule!r}")
      try:
        re.compile(rule[0])
      except re.error as e:
        raise checks.ConfigError(f"config.sharding.rules[{i}] = {rule[0]!r} is no regular "
                                 f"expression ({e})") from None
      rules.append((rule[0], rule[1]))
    min_size = checks.integer(checks.get(config.sharding, "min_fsdp_size", "config.sharding"),
                              "config.sharding.min_fsdp_size", 0)
    return cls(data=sizes["data"], fsdp=sizes["fsdp"], rules=tuple(rules),
               min_fsdp_size=min_size)


# ------------------------------------------------------------------ multi-host start-up
def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None) -> None:
  """Starts jax.distributed when this is one process of several.

  Arguments fall back to the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID), which the launch scripts set. On TPU pods and SLURM/Open MPI
  clusters jax detects everything itself, so IMAGEBRUSH_DISTRIBUTED=1 with no address
  calls initialize() bare. A single process without any of these does nothing.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  auto = env.get("IMAGEBRUSH_DISTRIBUTED", "0") == "1"
  if coordinator_address is None and not auto:
    return
  if env.get("JAX_PLATFORMS", "") == "cpu":
    # CPU processes talk through gloo (the test suite simulates hosts this way). Asking jax
    # for its backend here would start it, and initialize() must come first.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id,
                             local_device_ids=local_device_ids)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


# ------------------------------------------------------------------ mesh
def mesh_shape(options: MeshOptions, num_devices: int) -> tuple[int, int]:
  """Resolves the mesh sizes {data, fsdp} for `num_devices`; one may be -1 (fills the rest)."""
  sizes = [int(getattr(options, a)) for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{axis} must be a positive size or -1, got {size}")
  if sizes.count(-1) > 1:
    raise ValueError("config.mesh: at most one of data/fsdp may be -1")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise ValueError(f"config.mesh: {num_devices} devices do not divide by {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh: data={sizes[0]} x fsdp={sizes[1]} != {num_devices} devices")
  return tuple(sizes)


def make_mesh(options: MeshOptions, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices (all hosts), 'fsdp' the faster axis."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(options, len(devices))
  if devices == list(jax.devices()):
    try:  # topology-aware order on TPU/GPU; plain order on CPU
      from jax.experimental import mesh_utils
      grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:  # pylint: disable=broad-except
      grid = np.array(devices).reshape(shape)
  else:
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ------------------------------------------------------------------ sharding rules
def path_name(path) -> str:
  """A pytree key path as "a/b/0/c", the same for dicts, attributes and sequences."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
  """Splits the largest dimension that divides by the fsdp axis; small arrays replicate."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def _spec_from_rule(rule: str, shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
  if rule == "fsdp":
    return fsdp_spec(shape, fsdp_size, min_size)
  if rule == "replicate":
    return P()
  raise ValueError(f"config.sharding.rules: unknown rule {rule!r} (use 'fsdp' or 'replicate')")


def tree_specs(tree: Any, mesh: Mesh, options: MeshOptions) -> Any:
  """PartitionSpecs for a pytree of arrays/ShapeDtypeStructs.

  options.rules is a sequence of (regex, 'fsdp' | 'replicate'); the first regex that matches
  the '/'-joined parameter path wins; paths that match none use 'fsdp'.
  """
  fsdp_size = mesh.shape["fsdp"]
  min_size = int(options.min_fsdp_size)
  rules = [(re.compile(r), kind) for r, kind in options.rules]

  def spec_for(path, leaf):
    shape = getattr(leaf, "shape", ())
    name = path_name(path)
    for regex, kind in rules:
      if regex.search(name):
        return _spec_from_rule(kind, shape, fsdp_size, min_size)
    return fsdp_spec(shape, fsdp_size, min_size)

  return jax.tree_util.tree_map_with_path(spec_for, tree)


def tree_shardings(tree: Any, mesh: Mesh, options: MeshOptions) -> Any:
  """NamedShardings on `mesh` for a pytree, per tree_specs."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree_specs(tree, mesh, options),
                      is_leaf=lambda x: isinstance(x, P))


# ------------------------------------------------------------------ host data -> global arrays
def host_batch_to_global(batch: Any, mesh: Mesh) -> Any:
  """Each host's numpy batch becomes its shard of one global jax.Array (batch dim split)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def local_batch_size(global_batch_size: int) -> int:
  """This host's share of the global batch; it must divide evenly over hosts and devices."""
  if global_batch_size % jax.device_count():
    raise ValueError(f"config.train.batch_size={global_batch_size} must divide by the "
                     f"{jax.device_count()} devices")
  return global_batch_size // jax.process_count()
