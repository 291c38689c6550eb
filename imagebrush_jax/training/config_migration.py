"""One migration for configs written by earlier versions of this project (a run's saved
config.json or checkpoint config, an exported file's, a user's config file): keys renamed since
are moved, keys removed are dropped, and keys added since get the value that keeps the old run's
behaviour. Every program applies it once, where it reads a config, so library code reads every
key directly and the defaults stay in configs/default.py alone.
"""
from __future__ import annotations

from typing import Any

import ml_collections

# (old key, new key): the synthetic scenes' and the data set's keys moved into sub-dicts.
RENAMED = (
    ("data.backgrounds", "data.synthetic.backgrounds"),
    ("data.hollow_prob", "data.synthetic.hollow_prob"),
    ("data.largest_margin", "data.synthetic.largest_margin"),
    ("data.num_objects", "data.synthetic.num_objects"),
    ("data.object_size", "data.synthetic.object_size"),
    ("data.shapes", "data.synthetic.shapes"),
    ("data.stroke_width", "data.synthetic.stroke_width"),
    ("data.folder_root", "data.folder.root"),
    ("data.folder_check_images", "data.folder.check_images"),
    ("data.tfds_dir", "data.tfds.dir"),
    ("model.unet.attention_impl", "model.attention_impl"),
    ("model.unet.conv_impl", "model.conv_impl"),
)
# Keys that no longer mean anything (the TFDS builder options before data sets were built).
REMOVED = ("data.tfds_name", "data.tfds_split", "data.tfds_synthetic_pairs", "data.tfds.name",
           "data.tfds.split", "data.tfds.synthetic_pairs", "model.prompt.attention_impl")
# (key, the value a run saved before the key existed behaved as), added where the config has the
# key's section.
ADDED = (
    ("data.mixture", ()),
    ("data.eval_fraction", 0.0),
    ("data.folder.root", ""),
    ("data.folder.check_images", True),
    ("data.tfds.dir", ""),
    ("data.cached_latents", False),
    ("model.target_cell_fill", "zeros"),
    ("model.variant", ""),
    ("model.variant_options", {}),
    ("model.remat_policy", ""),
    ("model.attention_impl", "auto"),
    ("model.conv_impl", "auto"),
    ("model.unet_init", ""),
    ("model.prompt.vit_init", ""),
    ("diffusion.edit_region_weight", 0.0),
    ("diffusion.edit_region_threshold", 0.1),
    ("diffusion.residual_target", False),
    ("diffusion.timestep_sampling", "uniform"),
    ("diffusion.timestep_logit_mean", 0.0),
    ("diffusion.timestep_logit_std", 1.0),
    ("diffusion.min_snr_gamma", 0.0),
    ("model.prompt.pair_difference", False),
    ("model.unet.grid_positions", False),
    ("model.unet.pooled_prompt", False),
    ("model.task_oracle", False),
    ("model.backbone", "unet"),
    ("model.dit.patch_size", 2),
    ("model.dit.width", 128),
    ("model.dit.depth", 4),
    ("model.dit.num_heads", 4),
    ("model.dit.mlp_ratio", 4),
    ("model.dit.dropout", 0.0),
    ("model.dit.position_bias", False),
    ("train.accuracy_num_grids", 0),
    ("train.stop_check_every", 1),
    ("checkpoint.restore_step", -1),
    ("checkpoint.async_save", True),
    ("autoencoder.remat_policy", ""),
    ("autoencoder.attention_impl", "auto"),
    ("autoencoder.conv_impl", "auto"),
)


def _split(key: str) -> tuple[list[str], str]:
  *parents, leaf = key.split(".")
  return parents, leaf


def _node(tree: dict, parents: list[str], create: bool) -> dict | None:
  for part in parents:
    child = tree.get(part)
    if not isinstance(child, dict):
      if not create:
        return None
      child = tree[part] = {}
    tree = child
  return tree


def migrate_dict(config: dict[str, Any]) -> dict[str, Any]:
  """A plain-dict config in the current layout (a new dict; the argument is not changed)."""
  tree = ml_collections.ConfigDict(config).to_dict()  # a deep copy
  for old, new in RENAMED:
    parents, leaf = _split(old)
    node = _node(tree, parents, create=False)
    if node is not None and leaf in node:
      value = node.pop(leaf)
      new_parents, new_leaf = _split(new)
      _node(tree, new_parents, create=True).setdefault(new_leaf, value)
  for key in REMOVED:
    parents, leaf = _split(key)
    node = _node(tree, parents, create=False)
    if node is not None:
      node.pop(leaf, None)
  for key, value in ADDED:  # in the sections the config has (an autoencoder's has no model)
    parents, leaf = _split(key)
    if parents[0] in tree:
      _node(tree, parents, create=True).setdefault(leaf, value)
  return tree


def migrate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` in the current layout, as a new ConfigDict (unlocked, tuples kept)."""
  return ml_collections.ConfigDict(migrate_dict(config.to_dict()))
