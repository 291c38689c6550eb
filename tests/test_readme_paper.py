"""The README's commands for the paper's configs (tests/readme_plan.py's "paper" chain), run as
written (a subprocess each) at tiny size: the published data sets built, the diffusers and
transformers weights converted, paper_256 trained in the converted VAE's latent space and
paper_256_from_sd from the converted UNet, VAE and ViT; then the paper_256 run is edited and
evaluated without its autoencoder file."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

import readme_plan


def test_paper_commands(tmp_path):
  work = str(tmp_path)
  readme_plan.make_inputs(work, published=True, weights=True)
  readme_plan.run_chain("paper", work)

  # The latent run (paper_256, from the converted diffusers VAE) edits and evaluates from its
  # checkpoint alone: the VAE file is not needed after training.
  os.remove(os.path.join(work, "sd_vae.safetensors"))
  py = readme_plan.PY
  for command in (f"{py} -m imagebrush_jax.infer --workdir runs/paper --before a.png "
                  "--after b.png --query q.png --output paper_out.png --steps 2",
                  f"{py} -m imagebrush_jax.evaluate --workdir runs/paper --num_examples 8 "
                  "--output paper_metrics.json --steps 2 --batch_size 4 --no_cycle"):
    proc = readme_plan.run(command, [], work)
    assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])
  assert Image.open(os.path.join(work, "paper_out.png")).size == (35, 27)
  metrics = json.load(open(os.path.join(work, "paper_metrics.json")))
  assert metrics["num_examples"] == 8 and np.isfinite(metrics["psnr"])
  # Its tasks are those of the two built data sets: 2 + 2 trained on, 1 + 1 held out.
  saved = json.load(open(os.path.join(work, "runs/paper/config.json")))["data"]
  trained, held = saved["train_tasks"], saved["heldout_tasks"]
  assert len(trained) == 4 and len(held) == 2 and not set(trained) & set(held)
  assert set(trained + held) == {"make it snowy", "add a moon", "add a night sky",
                                 "bear", "car", "goat"}
  assert set(held) == {"add a night sky", "goat"}
  assert set(metrics["per_task"]) == set(trained + held) and metrics["accuracy"] is None
