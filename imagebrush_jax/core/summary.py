"""Parameter counts of a config's model, from shapes only (nothing is allocated).

  python -m imagebrush_jax.summary --config configs/paper_256.py

Prints one line per component and, last, one JSON line with the counts.
"""
from __future__ import annotations

import json
from typing import Any

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from imagebrush_jax.core import build as build_lib


def count(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts: total, UNet, prompt encoder (ViT / mixer / other), plug-ins (a variant's
  extra UNet inputs; its extra prompt tokens count in prompt_other)."""
  shapes = build_lib.param_shapes(build_lib.build_model(config), config)
  prompt = shapes["prompt_encoder"]
  vit, mixer = count(prompt["vit"]), count(prompt["mixer"])
  return dict(total=count(shapes), unet=count(shapes["unet"]), prompt_encoder=count(prompt),
              prompt_vit=vit, prompt_mixer=mixer,
              prompt_other=count(prompt) - vit - mixer,
              extra_inputs=count(shapes.get("extra_inputs", {})))


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/paper_256.py")
  counts = param_counts(config)
  for name, n in counts.items():
    print(f"{name:>16}: {n:>13,d}  ({n / 1e6:8.2f}M)")
  print(json.dumps(dict(config=config_flags.get_config_filename(flags.FLAGS["config"]),
                      **counts)))


if __name__ == "__main__":
  # Flags are defined only when run as a program: importing this module defines none.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.")
  app.run(main)
