"""Paths read from input data (index files, listings) stay inside the folder they came with."""
import json

import numpy as np
import pytest

from imagebrush_jax.infra import files
from imagebrush_jax.converters import diffusers_folder as df


def test_join_inside_keeps_relative_parts_and_refuses_the_rest(tmp_path):
  assert files.join_inside(str(tmp_path), "a/b.jpg", "x") == str(tmp_path / "a" / "b.jpg")
  assert files.join_inside("gs://b/run", "a/./b", "x") == "gs://b/run/a/b"
  for part in ("../x", "a/../../x", "a/..", "/srv/x", "gs://other/x", "C:\\x", "\\\\h\\s", ""):
    with pytest.raises(ValueError, match="index.json entry 3"):
      files.join_inside("gs://b/run", part, "index.json entry 3")
  assert files.join("gs://b/run", "/srv/x") == "/srv/x"  # plain join: an absolute part wins


def test_a_safetensors_index_naming_a_shard_outside_its_folder_is_refused(tmp_path):
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  (tmp_path / "secret.safetensors").write_bytes(save({"a": np.ones(2, np.float32)}))
  (tmp_path / "vae").mkdir()
  index = {"weight_map": {"a": "../secret.safetensors"}}
  (tmp_path / "vae" / df.WEIGHTS_INDEX).write_text(json.dumps(index))
  with pytest.raises(df.ConversionError, match=r"weight_map: '../secret.safetensors' must be"):
    df.read_weights(str(tmp_path / "vae"))
