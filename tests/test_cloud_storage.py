"""Workdirs and files in a gs:// bucket, against a local Cloud Storage emulator (no network): a
run trained into a bucket, SIGKILLed after a checkpoint and resumed to the uninterrupted local
run's losses, then used by infer and evaluate there; the file layer's reads, atomic writes and
growing logs; parameter files; and the one-line errors for a bucket without credentials, a
missing bucket and training data in a bucket."""
import json
import signal
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import tiny_test
from imagebrush_jax.infra import files
from imagebrush_jax.converters import params_file
from imagebrush_jax.data import options
import test_train

ROOT = test_train.ROOT
STEPS = test_train.STEPS


def _run(cmd, env):
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def bucket_env(host: str) -> dict:
  """A 1-device CLI environment using the Cloud Storage emulator at `host`: that one variable
  points gcsfs, google-cloud-storage and (through the file layer) tensorstore at it."""
  env = test_train._env(1)  # pylint: disable=protected-access
  env["STORAGE_EMULATOR_HOST"] = host
  for key in ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
    env.pop(key, None)
  return env


def _losses_by_step(text: str) -> dict[int, float]:
  """step -> loss of a JSONL history (every line must be whole JSON); a step logged twice,
  trained again after a resume from an earlier checkpoint, keeps its last record."""
  return {r["step"]: r["loss"] for r in map(json.loads, text.splitlines())}


def _train_cmd(workdir, overrides):
  cmd, _ = test_train._cli(workdir, overrides)  # pylint: disable=protected-access
  return cmd


# ---------------------------------------------------------------------------- end to end


def test_bucket_run_killed_and_resumed_matches_local_run_then_infer_and_evaluate(
    gcs_emulator, tmp_path):
  """Trained into gs://test/run on the storage emulator and SIGKILLed once step 10's checkpoint
  is committed there; resumed, it logs the uninterrupted local run's losses; infer and
  evaluate then read the run, their inputs and manifest from the bucket and write there."""
  local = tmp_path / "local"
  test_train._run_cli(local, STEPS)  # pylint: disable=protected-access  # the reference
  workdir, env = "gs://test/run", bucket_env(gcs_emulator)
  cmd, _ = test_train._cli(workdir, STEPS)  # pylint: disable=protected-access
  marker = f"{workdir}/checkpoints/10/commit_success.txt"
  code, out, err = test_train.run_and_signal_when(
      cmd, env, lambda: files.exists(marker), signal.SIGKILL, "step 10's checkpoint was seen")
  assert code == -signal.SIGKILL, f"finished before the kill: {out[-2000:]}{err[-3000:]}"
  logged = _losses_by_step(files.read_text(f"{workdir}/train_metrics.jsonl"))
  assert 10 <= max(logged) < 20, f"killed at step {max(logged)}"

  resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
  assert "resumed from step 10 " in resumed.stdout, resumed.stdout[-2000:]
  got = _losses_by_step(files.read_text(f"{workdir}/train_metrics.jsonl"))
  ref = _losses_by_step((local / "train_metrics.jsonl").read_text())
  assert sorted(got) == sorted(ref) == list(range(1, 21))
  np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-6)
  assert files.read_json_object(f"{workdir}/config.json")["train"]["num_steps"] == 20
  events = [n for n in files.listdir(f"{workdir}/tensorboard") if "tfevents" in n]
  assert any(b"train/loss" in files.read_bytes(f"{workdir}/tensorboard/{n}") for n in events)
  steps = files.listdir(f"{workdir}/checkpoints")  # the killed save was cleaned up or completed
  assert "20" in steps and all(
      files.exists(f"{workdir}/checkpoints/{s}/commit_success.txt") for s in steps), steps

  rng = np.random.default_rng(0)
  for name in ("before", "after", "query"):
    files.save_png_atomic(f"gs://test/in/{name}.png",
                          rng.integers(0, 256, (20, 28, 3), dtype=np.uint8))
  rows = [{"examples": [{"before": "before.png", "after": after}], "query": "query.png",
           "output": output} for after, output in (("after.png", "edited.png"),
                                                    ("gone.png", "never.png"))]
  files.write_text_atomic("gs://test/in/rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
  infer = subprocess.run(
      [sys.executable, "-m", "imagebrush_jax.infer", "--workdir", workdir, "--steps", "2",
       "--manifest", "gs://test/in/rows.jsonl", "--output_dir", "gs://test/out"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert infer.returncode == 1, infer.stderr[-3000:]  # row 2's image is missing; row 1 is done
  summary = json.loads(infer.stdout.splitlines()[-1])
  assert {k: summary[k] for k in ("done", "skipped", "failed", "processes")} == {
      "done": 1, "skipped": 0, "failed": 1, "processes": 1}
  assert json.loads(files.read_text("gs://test/out/summary.json"))["done"] == 1  # in the bucket too
  with files.open_read("gs://test/out/edited.png") as f:
    assert np.asarray(Image.open(f)).shape == (20, 28, 3)
  assert not files.exists("gs://test/out/never.png")
  errors = files.read_text("gs://test/out/errors.jsonl").splitlines()
  assert len(errors) == 1 and "gs://test/in/gone.png" in json.loads(errors[0])["error"]

  evaluate = subprocess.run(
      [sys.executable, "-m", "imagebrush_jax.evaluate", "--workdir", workdir, "--num_examples",
       "4", "--steps", "2", "--no_cycle", "--output", f"{workdir}/eval.json"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  metrics = files.read_json_object(f"{workdir}/eval.json")
  assert metrics["step"] == 20 and metrics["num_examples"] == 4 and np.isfinite(metrics["psnr"])


# ---------------------------------------------------------------------------- the file layer


def test_atomic_writes_reads_and_listing_in_a_bucket(gcs_emulator):
  files.write_text_atomic("gs://test/layer/a/metrics.json", '{"x": 1}')
  files.write_text_atomic("gs://test/layer/a/metrics.json", '{"x": 2}')  # replaced whole
  assert files.read_json_object("gs://test/layer/a/metrics.json") == {"x": 2}
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  files.save_png_atomic("gs://test/layer/a/image.png", image)
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
  env = bucket_env(gcs_emulator)
  line = _one_line_error(_run(_train_cmd("gs://no-such-bucket/run", STEPS), env))
  assert "gs://no-such-bucket: no such bucket" in line
  line = _one_line_error(_run(_train_cmd("gs://test/run_shards", STEPS + [
      ("data.source", "tfds"), ("data.tfds.dir", "gs://test/tfds")]), env))
  assert "config.data.tfds.dir=gs://test/tfds" in line and "gcsfuse" in line
  assert not files.exists("gs://test/run_shards")  # nothing written for a run that cannot start


def test_diffusers_folder_in_a_bucket_is_found_and_its_shards_read(gcs_emulator):
  """The converters' diffusers folder reading on a bucket: the vae/ sub-folder is found and the
  safetensors shards its index lists are read (the conversions themselves: test_convert_*)."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.converters import diffusers_folder as df
  shards = {"model-1.safetensors": {"a.weight": np.ones((2, 3), np.float32)},
            "model-2.safetensors": {"b.bias": np.arange(4, dtype=np.float32)}}
  for name, tensors in shards.items():
    files.write_bytes_atomic(f"gs://test/sd/vae/{name}", save(tensors))
  index = {"weight_map": {k: name for name, t in shards.items() for k in t}}
  files.write_text_atomic(f"gs://test/sd/vae/{df.WEIGHTS_INDEX}", json.dumps(index))
  files.write_text_atomic(f"gs://test/sd/vae/{df.CONFIG}", "{}")
  folder = df.resolve_folder("gs://test/sd", "vae", "AutoencoderKL")
  assert folder == "gs://test/sd/vae"
  state = df.read_weights(folder)
  assert sorted(state) == ["a.weight", "b.bias"]
  np.testing.assert_array_equal(state["b.bias"], np.arange(4, dtype=np.float32))
