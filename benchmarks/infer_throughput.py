"""Batch-inference throughput: edits per second per device of `infer --manifest`'s pipeline (rows
read and tiled in a background thread, sampled on the process's devices with a key per row,
written as PNGs), in one process against two processes sharing the manifest, side by side.

  python benchmarks/infer_throughput.py --config configs/cpu_demo.py [--num_edits 64]
      [--steps N] [--guidance G] [--batch_per_device 8] [--cpu_devices 2] [--config.key=value ...]
  python benchmarks/infer_throughput.py --config configs/paper_256.py   # on an accelerator

Random weights of the config's model (in latent space, of its autoencoder too, so the encode and
decode are included) and random images at the config's render size; --steps and --guidance
default to the config's sampling (paper_256: 50 guided DDIM steps at 7.5). Each leg runs as
processes of this script: one process with all devices, then two processes (jax.distributed, as
the launchers start `infer`) with half of the devices each (on the CPU: --cpu_devices simulated
devices, split; several GPUs: split with CUDA_VISIBLE_DEVICES; one GPU: both processes share it,
each with under half its memory). A process compiles its sampler before the clock starts (a
warm-up batch: `warmup_s`), so the rate is the steady one; the legs edit the same rows with the
same batch per device, so `ratio_per_device` (two processes' edits/s/device over one's; 1.0: no
loss from splitting a job over processes) compares like with like. Prints one JSON line last.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from ml_collections import config_flags
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cpu_demo.py", "Config file.")
_NUM_EDITS = flags.DEFINE_integer("num_edits", 64, "Manifest rows edited by each leg.",
                                  lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", None, "DDIM steps (default: the config's sampling).",
                              lower_bound=1)
_GUIDANCE = flags.DEFINE_float("guidance", None, "Guidance scale (default: the config's).")
_BATCH = flags.DEFINE_integer("batch_per_device", 8, "Grids per device in a batch.",
                              lower_bound=1)
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 2, "Simulated devices on the CPU backend "
                                    "(split between the two processes).", lower_bound=1)
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Folder for the images and outputs (default: "
                                "a temporary one, removed at the end).")
# Set by the driver for the processes it starts.
_WORKER = flags.DEFINE_string("worker", None, "(internal) MANIFEST,OUTPUT_DIR: run as a worker.")

# ------------------------------------------------------------------------------ worker


def _random_run(config):
  """A Run of the config's model on random weights (latent configs: random autoencoder too)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import workload  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.core import options as core_options  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.inference import run_loading  # pylint: disable=g-import-not-at-top
  task, _ = workload.build_task(config)
  params = jax.tree.map(np.asarray, jax.jit(task.objective.init_params)(jax.random.key(0)))
  return run_loading.Run(config=config, spec=core_options.ImageBrushSpec.from_config(config),
                         model=task.objective.model, params=params, step=0,
                         workdir="random weights", space=task.objective.space)


def _worker(manifest: str, output_dir: str) -> None:
  """One process of a leg: its rows of the manifest, timed after a compiled warm-up batch."""
  # pylint: disable=g-import-not-at-top
  from imagebrush_jax.infra import parallel
  parallel.initialize_distributed()  # the driver's JAX_* environment; a no-op for one process
  import jax
  from jax.experimental import multihost_utils
  from imagebrush_jax.inference import batch as batch_lib
  from imagebrush_jax.inference import editor as editor_lib
  from imagebrush_jax.inference import manifest as manifest_lib
  # pylint: enable=g-import-not-at-top
  index, count = jax.process_index(), jax.process_count()
  run = _random_run(_CONFIG.value)
  editor = editor_lib.Editor(run, batch_size=_BATCH.value * jax.local_device_count(),
                             num_steps=_STEPS.value, guidance_scale=_GUIDANCE.value)
  first = next(r for r in manifest_lib.read_manifest(manifest, output_dir)
               if isinstance(r, manifest_lib.Row))
  loaded = batch_lib.load_row(first, num_examples=editor.num_examples,
                              spec=batch_lib.tile_spec(run.config))
  warm = {k: v[None] for k, v in loaded.grid.items()}
  start = time.perf_counter()
  editor.edit_grids(warm, editor_lib.row_keys(jax.random.key(0), [0]))  # compiles the sampler
  warmup_s = time.perf_counter() - start
  if count > 1:
    multihost_utils.sync_global_devices("infer_throughput_start")  # start the clocks together
  start = time.perf_counter()
  stats = batch_lib.edit_rows(
      editor, manifest_lib.read_manifest(manifest, output_dir, process_index=index,
                                         process_count=count),
      os.path.join(output_dir, batch_lib.errors_part(index)), skip_existing=False,
      log=lambda m: None)
  seconds = time.perf_counter() - start
  print(json.dumps({"process": index, "processes": count, **stats, "seconds": seconds,
                    "warmup_s": warmup_s, "local_devices": jax.local_device_count(),
                    "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}))
  sys.stdout.flush()

# ------------------------------------------------------------------------------ driver


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_inputs(config, folder: str, num_edits: int) -> str:
  """Random images at the config's render size and a manifest of `num_edits` rows (every query
  its own image); returns the manifest's path."""
  side = int(round(int(config.data.tile_size) * float(config.data.crop_scale)))
  rng = np.random.default_rng(0)

  def image(name):
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
        os.path.join(folder, name))
    return name

  examples = [{"before": image(f"before{k}.png"), "after": image(f"after{k}.png")}
              for k in range(int(config.data.num_examples))]
  path = os.path.join(folder, "rows.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for i in range(num_edits):
      f.write(json.dumps({"examples": examples, "query": image(f"q{i}.png"),
                          "output": f"e{i}.png"}) + "\n")
  return path


def _xla_flags(devices: int) -> str:
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([f"--xla_force_host_platform_device_count={devices}", *kept])


def _leg(envs: list[dict], manifest: str, output_dir: str) -> tuple[dict, dict]:
  """Runs one worker per environment, at once: (the leg's rate, process 0's report)."""
  os.makedirs(output_dir, exist_ok=True)
  argv = [sys.executable, os.path.abspath(__file__), *sys.argv[1:],
          f"--worker={manifest},{output_dir}"]
  procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for env in envs]
  outs = [p.communicate() for p in procs]
  for p, (out, err) in zip(procs, outs):
    if p.returncode != 0:
      raise SystemExit(f"a worker failed (exit status {p.returncode}):\n{out[-2000:]}"
                       f"\n{err[-4000:]}")
  reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
  done = sum(r["done"] for r in reports)
  if any(r["failed"] for r in reports) or done != _NUM_EDITS.value:
    raise SystemExit(f"the leg edited {done} of {_NUM_EDITS.value} rows: {reports}")
  devices = sum(r["local_devices"] for r in reports)
  seconds = max(r["seconds"] for r in reports)  # they start together after a barrier
  return {"processes": len(reports), "devices": devices, "edits": done,
          "seconds": round(seconds, 4), "edits_per_s": round(done / seconds, 4),
          "edits_per_s_per_device": round(done / seconds / devices, 5),
          "warmup_s": round(max(r["warmup_s"] for r in reports), 2),
          "per_process": [{k: r[k] for k in ("process", "done", "seconds", "local_devices")}
                          for r in reports]}, reports[0]


def _two_process_envs(base: dict, backend: str, devices: int) -> tuple[list[dict], str]:
  """The two workers' environments for `devices` of `backend`, and how the devices are split."""
  port = _free_port()
  envs = [dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)) for i in range(2)]
  if backend == "cpu":
    if devices % 2:
      raise SystemExit(f"--cpu_devices {devices} does not split over two processes")
    for env in envs:
      env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=_xla_flags(devices // 2))
    return envs, f"{devices // 2} simulated CPU devices each"
  if backend == "gpu":
    if devices == 1:  # one GPU: both processes on it, each with under half of its memory
      for env in envs:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.45"
      return envs, "one GPU shared by both processes"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(devices)]
    half = len(ids) // 2
    for env, part in zip(envs, (ids[:half], ids[half:2 * half])):
      env["CUDA_VISIBLE_DEVICES"] = ",".join(part)
    return envs, f"{half} GPUs each (CUDA_VISIBLE_DEVICES)"
  raise SystemExit(f"two processes on one {backend} host are not set up here: run "
                   f"`infer --manifest` on a pod slice (launch/tpu_pod.sh infer)")


def main(argv):
  del argv
  if _WORKER.value:
    manifest, output_dir = _WORKER.value.split(",", 1)
    _worker(manifest, output_dir)
    return
  config = _CONFIG.value
  work = _WORK_DIR.value or tempfile.mkdtemp(prefix="infer_throughput_")
  try:
    os.makedirs(work, exist_ok=True)
    manifest = _write_inputs(config, work, _NUM_EDITS.value)
    base = dict(os.environ, PYTHONPATH=ROOT)
    base.pop("JAX_COORDINATOR_ADDRESS", None)
    one_env = dict(base, XLA_FLAGS=_xla_flags(_CPU_DEVICES.value))
    one, facts = _leg([one_env], manifest, os.path.join(work, "one"))
    envs, split = _two_process_envs(base, facts["backend"], one["devices"])
    two, _ = _leg(envs, manifest, os.path.join(work, "two"))
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work, ignore_errors=True)
  print(json.dumps({
      "benchmark": "infer_throughput",
      "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]) or ""),
      "backend": facts["backend"], "device": facts["device"],
      "steps": _STEPS.value or int(config.sampling.num_steps),
      "guidance_scale": (float(config.sampling.guidance_scale) if _GUIDANCE.value is None
                         else _GUIDANCE.value), "tile_size": int(config.data.tile_size),
      "num_examples": int(config.data.num_examples), "num_edits": _NUM_EDITS.value,
      "batch_per_device": _BATCH.value, "two_process_split": split,
      "one_process": one, "two_processes": two,
      "ratio_per_device": round(two["edits_per_s_per_device"] / one["edits_per_s_per_device"],
                                4),
  }))


if __name__ == "__main__":
  app.run(main)
