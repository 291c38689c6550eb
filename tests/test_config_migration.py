"""Configs saved by earlier versions (a run's config.json from before keys were moved, removed or
added) load through the one migration into the current layout, and a run of them still builds."""
import json
import os
import shutil

import jax
import pytest

from configs import default
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.inference import run_loading
from imagebrush_jax.training import config_migration

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# configs/default.py as saved by earlier versions (flat data.* scene keys, TFDS builder keys; no
# target-cell fill, residual target or edited-pixel weights).
OLD_CONFIGS = ("config_v2026_11_27.json", "config_v2026_11_28.json")
FREE_DICTS = ("variant_options", "arch")  # whose keys are the user's, not the layout's


def _keys(tree: dict, prefix: str = "") -> set[str]:
  out = set()
  for key, value in tree.items():
    if isinstance(value, dict) and key not in FREE_DICTS:
      out |= _keys(value, f"{prefix}{key}.")
    else:
      out.add(prefix + key)
  return out


@pytest.mark.parametrize("name", OLD_CONFIGS)
def test_an_old_config_migrates_to_the_current_layout(name):
  old = json.load(open(os.path.join(FIXTURES, name)))
  current = default.get_config().to_dict()
  assert _keys(old) != _keys(current)  # the fixture really is another layout
  migrated = config_migration.migrate_dict(old)
  assert _keys(migrated) == _keys(current)
  assert migrated == config_migration.migrate_dict(migrated)  # migrating twice changes nothing
  # Moved keys keep their values; added keys behave as the old run did.
  flat_scene = old["data"].get("num_objects", old["data"].get("synthetic", {}).get("num_objects"))
  assert migrated["data"]["synthetic"]["num_objects"] == flat_scene
  assert migrated["model"]["target_cell_fill"] == old["model"].get("target_cell_fill", "zeros")
  assert migrated["diffusion"]["residual_target"] is False
  assert migrated["diffusion"]["edit_region_weight"] == 0.0


def test_the_current_config_is_unchanged_by_the_migration():
  config = default.get_config()
  assert config_migration.migrate(config).to_dict() == config.to_dict()


def test_a_run_folder_with_an_old_config_loads_and_its_model_builds(tmp_path):
  shutil.copy(os.path.join(FIXTURES, OLD_CONFIGS[1]), tmp_path / "config.json")
  config = run_loading.load_config(str(tmp_path))
  assert config.model.target_cell_fill == "zeros" and config.data.mixture == ()
  assert isinstance(config.data.synthetic.shapes, tuple)  # JSON lists back to tuples
  model = build_lib.build_model(config)
  shapes = build_lib.param_shapes(model, config)
  assert jax.tree.leaves(shapes) and "unet" in shapes
