"""Files in a gs:// bucket, against a local Cloud Storage emulator (no network): the file
layer's reads, atomic writes and growing logs, parameter files, and the one-line errors for a
bucket without credentials, a missing bucket and training data in a bucket. (A run trained,
killed and resumed in a bucket, then used by infer and evaluate: test_train.py.)"""
import json
import subprocess

import numpy as np
import pytest

from configs import tiny_test
from imagebrush_jax import files
from imagebrush_jax.converters import params_file
from imagebrush_jax.data import options
import test_train

ROOT = test_train.ROOT
STEPS = test_train.STEPS


def _run(cmd, env):
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _train_cmd(workdir, overrides):
  cmd, _ = test_train._cli(workdir, overrides)  # pylint: disable=protected-access
  return cmd


# ---------------------------------------------------------------------------- the file layer


def test_atomic_writes_reads_and_listing_in_a_bucket(gcs_emulator):
  files.write_text_atomic("gs://test/layer/a/metrics.json", '{"x": 1}')
  files.write_text_atomic("gs://test/layer/a/metrics.json", '{"x": 2}')  # replaced whole
  assert files.read_json_object("gs://test/layer/a/metrics.json") == {"x": 2}
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  files.save_png_atomic("gs://test/layer/a/image.png", image)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with files.open_read("gs://test/layer/a/image.png") as f:
    np.testing.assert_array_equal(np.asarray(Image.open(f)), image)
  with pytest.raises(ValueError, match="uint8"):  # refused before anything is uploaded
    files.save_png_atomic("gs://test/layer/a/bad.png", image.astype(np.float32))
  assert files.listdir("gs://test/layer/a") == ["image.png", "metrics.json"]
  assert files.isdir("gs://test/layer/a") and files.isfile("gs://test/layer/a/image.png")
  assert not files.exists("gs://test/layer/a/bad.png")
  with pytest.raises(FileNotFoundError):
    files.read_bytes("gs://test/layer/missing.txt")


def test_line_log_in_a_bucket_continues_after_a_restart(gcs_emulator):
  log = files.LineLog("gs://test/layer/history.jsonl")
  log.append('{"step": 1}')
  log.append('{"step": 2}\n')
  resumed = files.LineLog("gs://test/layer/history.jsonl")  # a resumed run's writer
  resumed.append('{"step": 3}')
  assert files.read_text("gs://test/layer/history.jsonl") == (
      '{"step": 1}\n{"step": 2}\n{"step": 3}\n')


def test_line_log_in_a_bucket_uploads_at_most_every_flush_secs_and_on_flush(gcs_emulator):
  path = "gs://test/layer/throttled.jsonl"
  log = files.LineLog(path, flush_secs=3600)
  log.append('{"step": 1}')
  assert not files.exists(path)  # held until an hour has passed or flush()
  log.flush()
  log.append('{"step": 2}')
  assert files.read_text(path) == '{"step": 1}\n'
  log.flush()
  assert files.read_text(path) == '{"step": 1}\n{"step": 2}\n'


def test_converted_params_file_round_trips_through_a_bucket(gcs_emulator):
  params = {"enc": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "bias": np.ones(3, np.float32)}
  params_file.save("gs://test/weights/vae.safetensors", params, kind="test",
                   architecture={"width": 3}, source="test")
  loaded, arch, _ = params_file.load("gs://test/weights/vae.safetensors", "test")
  assert arch == {"width": 3}
  np.testing.assert_array_equal(loaded["enc"]["kernel"], params["enc"]["kernel"])
  np.testing.assert_array_equal(loaded["bias"], params["bias"])


def test_paths_join_and_parent_on_urls_and_local_paths(tmp_path):
  assert files.join("gs://b/runs/x", "../in/a.png") == "gs://b/runs/in/a.png"
  assert files.join("gs://b/runs", "gs://c/k") == "gs://c/k"
  assert files.join("gs://b/in", "/abs/a.png") == "/abs/a.png"
  assert files.parent("gs://b/in/rows.jsonl") == "gs://b/in"
  assert files.join(str(tmp_path), "a/../b.png") == str(tmp_path / "b.png")
  assert files.is_remote("gs://b/k") and not files.is_remote("/data/a://b")
  with pytest.raises(ValueError, match="leaves the bucket"):
    files.join("gs://b/in", "../../other/a.png")


# ---------------------------------------------------------------------------- errors


def _one_line_error(proc) -> str:
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def test_bucket_without_credentials_fails_at_start_naming_it(tmp_path):
  env = test_train._env(1)  # pylint: disable=protected-access
  for key in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
    env.pop(key, None)
  env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true",
             GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
  line = _one_line_error(_run(_train_cmd("gs://team-bucket/runs/paper", STEPS), env))
  assert "gs://team-bucket" in line and "gcloud auth application-default login" in line


def test_training_data_in_a_bucket_is_refused_naming_the_key():
  config = tiny_test.get_config()
  config.data.source, config.data.folder.root = "folder", "gs://test/pairs"
  with pytest.raises(ValueError, match=r"config.data.folder.root=gs://test/pairs: .*gcsfuse"):
    options.from_config(config)


def test_missing_bucket_and_shards_in_a_bucket_are_one_line_errors(gcs_emulator):
  env = test_train.bucket_env(gcs_emulator)
  line = _one_line_error(_run(_train_cmd("gs://no-such-bucket/run", STEPS), env))
  assert "gs://no-such-bucket: no such bucket" in line
  line = _one_line_error(_run(_train_cmd("gs://test/run_shards", STEPS + [
      ("data.source", "tfds"), ("data.tfds.dir", "gs://test/tfds")]), env))
  assert "config.data.tfds.dir=gs://test/tfds" in line and "gcsfuse" in line
  assert not files.exists("gs://test/run_shards")  # nothing written for a run that cannot start


def test_diffusers_folder_in_a_bucket_is_found_and_its_shards_read(gcs_emulator):
  """The SD VAE converter's folder reading on a bucket: the vae/ sub-folder is found and the
  safetensors shards its index lists are read (the conversion itself: test_convert_sd_vae)."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.converters import sd_vae  # pylint: disable=g-import-not-at-top
  shards = {"model-1.safetensors": {"a.weight": np.ones((2, 3), np.float32)},
            "model-2.safetensors": {"b.bias": np.arange(4, dtype=np.float32)}}
  for name, tensors in shards.items():
    files.write_bytes_atomic(f"gs://test/sd/vae/{name}", save(tensors))
  index = {"weight_map": {k: name for name, t in shards.items() for k in t}}
  files.write_text_atomic(f"gs://test/sd/vae/{sd_vae.WEIGHTS_INDEX}", json.dumps(index))
  files.write_text_atomic(f"gs://test/sd/vae/{sd_vae.CONFIG}", "{}")
  folder = sd_vae.resolve_folder("gs://test/sd")
  assert folder == "gs://test/sd/vae"
  state = sd_vae.read_weights(folder)
  assert sorted(state) == ["a.weight", "b.bias"]
  np.testing.assert_array_equal(state["b.bias"], np.arange(4, dtype=np.float32))
