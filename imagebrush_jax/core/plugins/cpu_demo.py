"""The CPU demo's inductive biases for global edits (configs/cpu_demo.py), as plug-ins.

Global edits of the synthetic family are a flip or rotation of I followed by a colour map. Three
plug-ins make them learnable in minutes on 2 CPU cores (README, "What makes it learn in minutes",
has the ablation):
- QueryUnderTarget (conditioning): the target cell of the known grid holds the query I, and with
  `dihedral` also I's 7 other flips/rotations/transposes as extra channels, so the UNet starts
  from the image it must edit and a geometric edit becomes a per-pixel choice.
- PairStatsTokens (extra prompt tokens): one token per example pair holding the colour
  correlation between E' and each dihedral view of E; for the view E' came from, that matrix is
  the edit's colour map, a signal the ViT would otherwise have to learn to compute.
- EditProposal (extra UNet inputs): the mean prompt token sets a per-sample linear map of the
  conditioning, which spans any dihedral view of I followed by any affine colour map; the UNet
  reads that draft of the target cell as more input channels.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagebrush_jax.core import model as model_lib
from imagebrush_jax.models import runtime as runtime_lib
from imagebrush_jax.core.plugins.dihedral import NUM_DIHEDRAL_VIEWS, dihedral_views

TARGET_CELL_FILLS = ("zeros", "query", "query_dihedral")


@dataclasses.dataclass(frozen=True)
class QueryUnderTarget:
  """Known grid whose target cell holds the query I (its left neighbour), masked cells kept.

  With `dihedral` the 7 other dihedral views of I follow as channels (zero outside the target
  cell): [B, H, W, 8C].
  """
  dihedral: bool = True

  def __call__(self, x0: jax.Array, mask: jax.Array) -> jax.Array:
    tile = x0.shape[2] // 2
    base = model_lib.QueryInTarget()(x0, mask)
    if not self.dihedral:
      return base
    views = [jnp.zeros_like(x0).at[:, -tile:, tile:].set(v)
             for v in dihedral_views(x0[:, -tile:, :tile])]
    return jnp.concatenate([base, *views], axis=-1)

  def channels(self, channels: int) -> int:
    return channels * NUM_DIHEDRAL_VIEWS if self.dihedral else channels


def pair_statistics(before: jax.Array, after: jax.Array, eps: float = 1e-4) -> jax.Array:
  """Colour statistics of each example pair: [B, K, S, S, 3] x 2 -> [B, K, 8*9 + 12].

  For each of the 8 dihedral views V of E: the 3x3 correlation between the standardised channels
  of V(E) and E' (mean over pixels); then the channel means and standard deviations of E and E'.
  """
  def standardise(x):
    mean = x.mean(axis=(-3, -2), keepdims=True)
    std = jnp.sqrt(x.var(axis=(-3, -2), keepdims=True) + eps)
    return (x - mean) / std, mean[..., 0, 0, :], std[..., 0, 0, :]

  views = jnp.stack([before, *dihedral_views(before)], axis=2)  # [B, K, 8, S, S, 3]
  z_views, mean_views, std_views = standardise(views)
  z_after, mean_after, std_after = standardise(after)
  mean_before, std_before = mean_views[:, :, 0], std_views[:, :, 0]  # view 0 is E itself
  pixels = before.shape[-3] * before.shape[-2]
  corr = jnp.einsum("bkvhwc,bkhwd->bkvcd", z_views, z_after) / pixels
  return jnp.concatenate([corr.reshape(*corr.shape[:2], -1), mean_before, std_before,
                          mean_after, std_after], axis=-1)


class PairStatsTokens(nn.Module):
  """One token per example pair: an MLP of pair_statistics plus the pair's index embedding."""
  width: int
  max_examples: int = 8
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, before: jax.Array, after: jax.Array, query: jax.Array) -> jax.Array:
    del query
    dtype = self.runtime.dtype
    stats = pair_statistics(before.astype(jnp.float32), after.astype(jnp.float32))
    h = nn.gelu(nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32,
                         name="fc1")(stats.astype(dtype)))
    h = nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="fc2")(h)
    index = nn.Embed(self.max_examples, self.width, embedding_init=nn.initializers.normal(0.02),
                     param_dtype=jnp.float32, name="index_embed")(jnp.arange(before.shape[1]))
    return h + index.astype(dtype)[None]


class EditProposal(nn.Module):
  """A per-sample linear map of each pixel's conditioning, its weights read from the prompt.

  The mean prompt token gives a [C' + 1, C] matrix (and bias) per sample, applied to every pixel
  of `cond` and kept on the target cell. Local edits still come from the UNet, which may ignore
  the draft.
  """
  out_channels: int
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, cond: jax.Array, mask: jax.Array, context: jax.Array) -> jax.Array:
    b, c = cond.shape[0], cond.shape[-1]
    weights = nn.Dense(self.out_channels * (c + 1), param_dtype=jnp.float32,
                       name="weights")(context.mean(axis=1).astype(jnp.float32))
    weights = weights.reshape(b, c + 1, self.out_channels)
    draft = jnp.einsum("bhwc,bco->bhwo", cond.astype(jnp.float32), weights[:, :c])
    return ((draft + weights[:, c][:, None, None]) * mask).astype(self.runtime.dtype)


def plugins(spec: Any, runtime: runtime_lib.Runtime, *,
            target_cell_fill: str = "query_dihedral", pair_stats: bool = True,
            edit_proposal: bool = True) -> model_lib.Plugins:
  """The demo's plug-ins; each option switches one off (the README's ablation rows).

  target_cell_fill: 'zeros' (the paper's), 'query' or 'query_dihedral' (QueryUnderTarget).
  pair_stats: PairStatsTokens in the prompt. edit_proposal: EditProposal's draft in the UNet.
  """
  if target_cell_fill not in TARGET_CELL_FILLS:
    raise ValueError(f"config.model.variant_options.target_cell_fill must be one of "
                     f"{TARGET_CELL_FILLS}, got {target_cell_fill!r}")
  if edit_proposal and target_cell_fill == "zeros":
    raise ValueError("config.model.variant_options.edit_proposal maps the query in the target "
                     "cell's conditioning: it needs target_cell_fill 'query' or 'query_dihedral'")
  conditioning = (model_lib.BlankTarget() if target_cell_fill == "zeros"
                  else QueryUnderTarget(dihedral=target_cell_fill == "query_dihedral"))
  return model_lib.Plugins(
      conditioning=conditioning,
      extra_tokens=(PairStatsTokens(spec.model.prompt.mixer.width,
                                    spec.model.prompt.max_examples, runtime)
                    if pair_stats else None),
      extra_inputs=EditProposal(spec.model.in_channels, runtime) if edit_proposal else None)
