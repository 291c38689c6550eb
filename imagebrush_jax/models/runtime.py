"""How a model runs, apart from what it computes: compute dtype, rematerialisation, kernels.

One frozen `Runtime` is built from the model config and handed to every module, so a block's
constructor lists its architecture and takes the run-time knobs as one argument.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from imagebrush_jax.infra import config_checks as checks

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")
CONV_IMPLS = ("auto", "xla", "matmul_grad")


def resolve_dtype(name: str | Any) -> Any:
  """Maps a config dtype name ('float32' | 'bfloat16' | 'float16') to a jnp dtype."""
  if not isinstance(name, str):
    return name
  if name not in _DTYPES:
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


def remat_policy(name: str) -> Callable[..., bool] | None:
  """Looks up a `jax.checkpoint_policies` entry by name ('' or None: save nothing)."""
  if not name:
    return None
  policy = getattr(jax.checkpoint_policies, name, None)
  if policy is None:
    raise ValueError(f"remat_policy: jax.checkpoint_policies has no {name!r}")
  return policy


@dataclasses.dataclass(frozen=True)
class Runtime:
  """Run-time knobs shared by every block of a model.

  dtype: compute dtype (parameters stay float32).
  remat, remat_policy: rematerialise each block in the backward pass, saving what the named
    jax.checkpoint_policies entry allows ('' saves nothing).
  attention_impl: 'auto' | 'einsum' | 'xla' | 'cudnn' (layers.dot_product_attention).
  conv_impl: 'auto' | 'xla' | 'matmul_grad' (conv.Conv).
  """
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = ""
  attention_impl: str = "auto"
  conv_impl: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, "
                       f"got {self.attention_impl!r}")
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
    remat_policy(self.remat_policy)

  @classmethod
  def from_config(cls, section: ml_collections.ConfigDict, key: str = "config.model"
                  ) -> "Runtime":
    """The knobs of a config section (dtype, remat, remat_policy, attention_impl, conv_impl);
    errors name the key under `key`."""
    get = lambda name: checks.get(section, name, key)
    values = dict(dtype=get("dtype"), remat=checks.boolean(get("remat"), f"{key}.remat"),
                  remat_policy=get("remat_policy"), attention_impl=get("attention_impl"),
                  conv_impl=get("conv_impl"))
    try:
      return cls(**values)
    except ValueError as e:
      raise checks.ConfigError(f"{key}.{e}") from None

  def maybe_remat(self, module_cls: type[nn.Module],
                  static_argnums: tuple[int, ...]) -> type[nn.Module]:
    """`module_cls` wrapped in nn.remat when `remat` is on (argnums count `self` as 0)."""
    if not self.remat:
      return module_cls
    return nn.remat(module_cls, static_argnums=static_argnums,
                    policy=remat_policy(self.remat_policy))
