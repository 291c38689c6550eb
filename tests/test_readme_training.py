"""The README's commands for configs/default.py on your own pairs and configs/objects.py
(tests/readme_plan.py's "own_pairs" and "objects" chains), run as written (a subprocess each)
at tiny size."""
from __future__ import annotations

import readme_plan


def test_own_pairs_commands(tmp_path):
  """The training grids previewed; default.py trained on a folder of pairs, and on the shards
  built from it."""
  work = str(tmp_path)
  readme_plan.make_inputs(work)
  readme_plan.run_chain("own_pairs", work)


def test_objects_commands(tmp_path):
  """objects.py trained, evaluated and reported; then with 3 example pairs, evaluated with the
  first pair repeated."""
  work = str(tmp_path)
  readme_plan.make_inputs(work)
  readme_plan.run_chain("objects", work)
