"""The memory plan (imagebrush_jax/training/memory_plan.py, benchmarks/memory_plan.py) at tiny
size on 2 simulated devices: its memory is the compiled memory analysis of the step training
compiles, it grows with the batch and shrinks with fsdp, 'fits' follows the device table, and
the README's plan command runs (its flags as written, sizes appended)."""
import json
import os
import shlex
import subprocess
import sys

import jax
import ml_collections
import pytest

import conftest
import readme_plan
from configs import tiny_test
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.infra import parallel
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import hardware
from imagebrush_jax.training import memory_plan
from imagebrush_jax.training import train_state
from benchmarks import workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def _tiny_latent() -> ml_collections.ConfigDict:
  """tiny_test in the latent space of a small random autoencoder (its architecture recorded)."""
  c = tiny_test.get_config()
  c.model.unet.channels = (16,)  # one level: a quicker compilation
  c.model.unet.attention = ("self+cross",)
  c.model.unet.num_res_blocks = 1
  c.data.tile_size = 16
  c.model.in_channels = 4
  c.model.latent_factor = 4
  c.model.autoencoder = ml_collections.ConfigDict(dict(
      params="", scaling_factor=0.0, sample_posterior=True, dtype="float32",
      arch=dict(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4)))
  c.sharding.min_fsdp_size = 2**8  # so that fsdp splits most of the tiny kernels
  return c


def _direct_peak_bytes(config, devices, batch_per_device: int) -> int:
  """The step compiled as benchmarks/train_mfu.py compiles it (random autoencoder weights,
  train_state's shapes and shardings), its memory analysis read directly."""
  task, _ = workload.build_task(config)
  options = parallel.MeshOptions.from_config(config)
  mesh = parallel.make_mesh(options, devices)
  abstract, shardings = train_state.state_shapes_and_shardings(task, mesh, options,
                                                               jax.random.key(0))
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       abstract, shardings)
  host = workload.random_batch(config, batch_per_device * len(devices))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=parallel.batch_sharding(mesh))
           for k, v in host.items()}
  compiled = train_state.jit_train_step(task, mesh, shardings).lower(state, batch).compile()
  stats = compiled_lib.memory_stats(compiled)
  return (stats["argument_bytes"] + stats["output_bytes"] - stats["alias_bytes"]
          + stats["temp_bytes"] + stats["code_bytes"])


def test_plan_is_the_compiled_step_memory_and_follows_batch_and_fsdp():
  config, devices = _tiny_latent(), jax.devices()[:2]
  example = workload.random_batch(config, 1)
  accelerators = list(hardware.ACCELERATOR_MEMORY_GIB)
  one, two = memory_plan.plan(
      config, devices, example,
      [memory_plan.Setting(1, "nothing_saveable", 1), memory_plan.Setting(1, "nothing_saveable", 2)],
      accelerators, log=lambda s: None)
  direct = _direct_peak_bytes(
      memory_plan.with_setting(config, fsdp=1, remat="nothing_saveable", global_batch=2),
      devices, 1)
  assert one["peak_bytes"] == direct
  assert (one["num_devices"], one["data"], one["fsdp"], one["global_batch"]) == (2, 2, 1, 2)
  assert two["peak_bytes"] > one["peak_bytes"] and two["global_batch"] == 4
  assert two["memory_analysis"]["temp_bytes"] > one["memory_analysis"]["temp_bytes"]
  # The arguments are the state and each device's share of the batch.
  batch_bytes = sum(v.nbytes for v in example.values())
  for r, grids in ((one, 1), (two, 2)):
    assert r["memory_analysis"]["argument_bytes"] == r["state_bytes"] + grids * batch_bytes
    assert r["fits"] == {a: memory_plan.fits(r["peak_bytes"], a) for a in accelerators}
    assert r["analytic_tflop_per_step"] > 0 and r["hardware_tflop_per_device"] > 0
  # Twice the grids, twice the analytic FLOPs of a step.
  assert two["analytic_tflop_per_step"] == pytest.approx(2 * one["analytic_tflop_per_step"],
                                                         rel=1e-3)
  # fsdp=2 splits the parameters, the EMA and the Adam moments over both devices (shapes only:
  # the README command's test compiles an fsdp=2 step).
  sharded = memory_plan.StepCompiler(config, devices, example, fsdp=2, remat="nothing_saveable")
  assert sharded.mesh.shape == {"data": 1, "fsdp": 2}
  assert sharded.state_bytes_per_device < 0.75 * one["state_bytes"]


def test_fits_and_choice_follow_the_device_table():
  assert hardware.ACCELERATOR_MEMORY_GIB == {
      "A100-40GB": 40.0, "A100-80GB": 80.0, "H100-80GB": 80.0, "H200": 141.0, "TPU v4": 32.0,
      "TPU v5e": 16.0, "TPU v5p": 95.0}
  assert [hardware.accelerator_name(a) for a in ("v5e", "tpu_v5p", "h100-80gb", "TPU v4")] == [
      "TPU v5e", "TPU v5p", "H100-80GB", "TPU v4"]
  with pytest.raises(ValueError, match="known: A100-40GB"):
    hardware.accelerator_name("H100")
  limit = int(memory_plan.HEADROOM * 16 * GIB)
  assert memory_plan.fits(limit, "v5e") and not memory_plan.fits(limit + 1, "v5e")
  assert memory_plan.fits(limit + 1, "TPU v4")
  assert hardware.table_peak_flops("H100-80GB") == 989e12

  def r(fsdp, remat_tflop, batch, accum, gib):
    return dict(num_devices=8, fsdp=fsdp, batch_per_device=batch, grad_accum_steps=accum,
                global_batch=8 * batch * accum, hardware_tflop_per_device=remat_tflop,
                memory_gib=gib, remat="x", analytic_tflop_per_step=1.0,
                fits={"A100-40GB": gib <= 36, "H200": gib <= 126.9})

  rows = [r(1, 5.0, 1, 36, 30), r(8, 5.0, 4, 9, 35), r(1, 4.0, 4, 9, 70), r(8, 4.0, 4, 9, 33),
          r(8, 4.0, 12, 3, 100), r(8, 4.0, 5, 1, 20)]
  assert memory_plan.choose(rows, "A100-40GB", 288) == rows[3]  # fewest steps, least recompute
  assert memory_plan.choose(rows, "H200", 288) == rows[4]
  assert memory_plan.choose(rows, "A100-40GB", 64) is None
  assert memory_plan.auto_accum(288, 8, 4) == 9
  with pytest.raises(ValueError, match="not a whole number"):
    memory_plan.auto_accum(288, 8, 5)


def test_readme_plan_command_at_tiny_size(tmp_path):
  """The README's plan command as written, with tiny sizes, one setting and 2 devices appended
  (the last of a repeated flag wins): a line per setting, then the summary."""
  commands = [c for c in readme_plan.readme_commands() if "benchmarks/memory_plan.py" in c]
  assert commands, "README.md shows no benchmarks/memory_plan.py command"
  for command in commands:
    assert any(command == planned for planned, _, _ in readme_plan.PLAN), command
  out, ae_file = tmp_path / "plan.jsonl", str(tmp_path / "ae.safetensors")
  arch = ae.AutoencoderConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                              norm_num_groups=4)
  autoencoder_params.save(ae_file, ae.init_params(ae.build(arch), jax.random.key(0)), arch,
                          source="random weights")  # the plan reads its header only
  args = shlex.split(commands[0])[1:] + [
      *readme_plan.TINY_LATENT, f"--config.model.autoencoder.params={ae_file}",
      "--num_devices", "2",
      "--fsdp", "2", "--remat", "dots_saveable", "--batch_per_device", "1", "--jsonl", str(out)]
  env = dict(os.environ, PYTHONPATH=ROOT,
             XLA_FLAGS=conftest.with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=2))
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  lines = [json.loads(l) for l in proc.stdout.strip().splitlines()]
  assert [json.loads(l) for l in out.read_text().splitlines()] == lines
  setting, summary = lines
  # train.batch_size 4 over 2 devices at 1 per device: 2 micro-batches per step.
  assert (setting["fsdp"], setting["remat"], setting["batch_per_device"],
          setting["grad_accum_steps"], setting["global_batch"]) == (2, "dots_saveable", 1, 2, 4)
  assert summary["summary"] and summary["settings"] == 1 and "CPU compiler" in summary["estimate"]
  chosen = summary["accelerators"]["TPU v5e"]["chosen"]
  assert chosen["fsdp"] == 2 and chosen["memory_gib"] == setting["memory_gib"]
