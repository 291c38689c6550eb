"""Every command README.md shows is planned (tests/readme_plan.py): run as written (a subprocess
each) at tiny size, or not run, with the reason. The commands that run are split into chains,
each run by one test: here the CPU demo's (make demo, then infer, export and evaluate on its
run) and the tiny latent run's; tests/test_readme_paper.py and tests/test_readme_training.py run
the others (separate files, which pytest-xdist can run on different workers).
"""
from __future__ import annotations

import glob
import json
import os
import sys

from PIL import Image

import readme_plan
from readme_plan import PLAN


def test_every_readme_command_is_planned():
  shown = set(readme_plan.readme_commands())
  planned = {command for command, _, _ in PLAN}
  assert shown - planned == set(), "README commands without a test"
  assert planned - shown == set(), "planned commands the README no longer shows"
  # Each command that runs belongs to a chain, and each chain is run by a test.
  chains = {note for _, extra, note in PLAN if extra is not None}
  assert chains == set(readme_plan.CHAINS), "commands in no chain, or chains with no command"
  tests = "".join(open(path).read() for path in glob.glob(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_readme_*.py")))
  for chain in chains:
    assert f'run_chain("{chain}"' in tests, f"no test runs the {chain!r} commands"
  for command, extra, note in PLAN:
    assert note, command  # the chain, or why the command does not run here


def test_demo_commands(tmp_path):
  """make demo, the demo run trained further as written (it has finished: it stops at once),
  edited (one edit, a manifest, an exported file) and evaluated."""
  work = str(tmp_path)
  readme_plan.make_inputs(work)
  readme_plan.run_chain("demo", work)
  assert Image.open(os.path.join(work, "out.png")).size == (35, 27)
  metrics = json.load(open(os.path.join(work, "metrics.json")))
  assert metrics["num_examples"] == 8 and metrics["step"] == 2


def test_latent_tiny_commands(tmp_path):
  """The tiny autoencoder trained, then latent_tiny in its latent space."""
  work = str(tmp_path)
  readme_plan.make_inputs(work)
  readme_plan.run_chain("latent_tiny", work)


if __name__ == "__main__":
  print("\n".join(readme_plan.readme_commands()))
  sys.exit(0)
