"""Non-degenerate random parameters from shapes alone, so tests skip compiling an init (and
the zero-initialised output layers do not hide what a module computes)."""
import jax
import jax.numpy as jnp
import numpy as np


def random_params(shapes, seed: int = 0, bias_scale: float = 0.5):
  """Norm scales near 1, kernels of unit fan-in variance, other arrays N(0, bias_scale^2)."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.1 * n)
    if path[-1].key == "kernel":
      return jnp.asarray(n / np.sqrt(max(np.prod(leaf.shape[:-1]), 1)))
    return jnp.asarray(bias_scale * n)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def module_params(module, *args, seed: int = 0, bias_scale: float = 0.5):
  """random_params for `module` applied to `args` (shapes from jax.eval_shape)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
  return random_params(shapes, seed, bias_scale)
