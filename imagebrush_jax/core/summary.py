"""Parameter counts of a config's model, from shapes only (nothing is allocated); printed by
`python -m imagebrush_jax.summary --config configs/paper_256.py`."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import options as options_lib


def count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts: total, UNet, prompt encoder (ViT / mixer / other), plug-ins (a variant's
  extra UNet inputs; its extra prompt tokens count in prompt_other)."""
  spec = options_lib.ImageBrushSpec.from_config(config)
  shapes = build_lib.param_shapes(build_lib.build_model(spec), spec)
  prompt = shapes["prompt_encoder"]
  vit, mixer = count(prompt["vit"]), count(prompt["mixer"])
  return dict(total=count(shapes), unet=count(shapes["unet"]), prompt_encoder=count(prompt),
              prompt_vit=vit, prompt_mixer=mixer,
              prompt_other=count(prompt) - vit - mixer,
              extra_inputs=count(shapes.get("extra_inputs", {})))

