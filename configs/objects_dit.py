"""configs/objects.py on the diffusion transformer: the same data, conditioning and objective,
with model.backbone = 'dit' (models/dit.py) and its learned position-pair attention bias, so a
fixed spatial map such as a quarter turn is a few table rows a head (docs/results.md, "Does the
general model learn from its examples?", has the ladder and the ablation).
"""
import ml_collections

from configs import objects


def get_config() -> ml_collections.ConfigDict:
  c = objects.get_config()
  c.model.backbone = "dit"
  c.model.dit.position_bias = True
  return c
