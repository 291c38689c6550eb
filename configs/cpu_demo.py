"""The CPU demo (`make demo`): the base model plus the demo's plug-ins for global edits.

The base config's model at the same size, with imagebrush_jax/core/plugins/cpu_demo.py plugged in
(the query and its dihedral views under the target cell, a pair-statistics prompt token, the edit
proposal) and the diffusion settings that suit a small pixel grid. It learns the six global
tasks in minutes on 2 CPU cores; docs/model.md describes each piece.
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- model + diffusion
  c.model.variant = "cpu_demo"
  c.model.variant_options = ml_collections.ConfigDict(dict(
      target_cell_fill="query_dihedral",  # zeros (the paper's) | query | query_dihedral
      pair_stats=True,  # a prompt token per pair: colour correlation of E' with views of E
      edit_proposal=True,  # the prompt drafts the target cell as a linear map of the condition
  ))
  c.diffusion.schedule = "cosine"  # suits small pixel grids
  c.diffusion.prediction_type = "v"  # stable at the high noise levels that decide the content
  c.diffusion.known_cell_weight = 0.0  # all capacity on the edit
  c.sampling.num_steps = 10  # the edits are near-deterministic: few steps suffice
  c.sampling.guidance_scale = 1.0
  c.sampling.spacing = "trailing"
  return c
