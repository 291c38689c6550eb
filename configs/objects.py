"""Every built-in task, object-level edits included, learned by the paper's model with general
training choices and no plug-ins.

The base config's model at the same size. What changes is how it is conditioned and trained,
choices that carry over unchanged to real data (docs/results.md has its
ladder and the ablations):
- the query I under the target cell of the UNet's conditioning (InstructPix2Pix's input-image
  conditioning): what the edit keeps is a copy, and capacity goes to what it changes;
- the target cell diffused as its residual to I (I' - I), so what the edit keeps is zero, and
  the model predicting that residual itself (x0 prediction) on the cosine schedule: its
  zero-initialised output starts as a copy of I, and the loss is on the target cell only;
- the target pixels that differ from I weighted up, so a local edit's few changed pixels are not
  drowned by the many it keeps;
- 10 DDIM steps without guidance.
"""
import ml_collections

from configs import default

OBJECT_TASKS = ("recolor", "move", "scale_up", "scale_down", "delete", "keep_largest", "hollow",
                "fill", "edges", "segment", "bbox")


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  # ---------------------------------------------------------------- data
  c.data.train_tasks = default.GLOBAL_TASKS + OBJECT_TASKS
  # Unseen compositions: two global pairs and an object-level edit followed by a global one.
  c.data.heldout_tasks = ("hflip+invert", "vflip+grayscale", "recolor+hflip")
  # ---------------------------------------------------------------- model + diffusion
  c.model.target_cell_fill = "query"
  c.diffusion.schedule = "cosine"
  c.diffusion.prediction_type = "sample"
  c.diffusion.known_cell_weight = 0.0
  c.diffusion.residual_target = True
  c.diffusion.edit_region_weight = 4.0
  c.sampling.num_steps = 10
  c.sampling.guidance_scale = 1.0
  c.sampling.spacing = "trailing"
  # ---------------------------------------------------------------- training
  c.train.num_steps = 1400  # 29 minutes on 2 CPU cores, periodic evaluation included
  c.train.eval_every = 100
  c.checkpoint.every = 100
  return c
