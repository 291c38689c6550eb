"""Performance accounting: the analytic FLOP count against XLA's cost analysis, device peaks,
the memory bisection, the two accelerator benchmarks at tiny size, and the install checks."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

import conftest
from configs import tiny_test
from imagebrush_jax.converters import autoencoder_params
from imagebrush_jax.models import autoencoder as ae
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.perf import hardware
from benchmarks import workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_AE = dict(block_out_channels=(32, 32, 32), layers_per_block=1, norm_num_groups=8)


def _wide_tiny(latent: bool = False, remat: bool = False) -> ml_collections.ConfigDict:
  """tiny_test at widths where matmuls dominate (as at every real size), optionally in the
  latent space of a small random autoencoder and rematerialised."""
  c = tiny_test.get_config()
  c.model.unet.channels = (64, 64)
  c.model.unet.norm_groups = 32
  c.model.prompt.vit.width = 64
  c.model.prompt.mixer.width = 64
  c.model.remat = remat
  if latent:
    c.data.tile_size = 16
    c.model.in_channels = 4
    c.model.latent_factor = 4
    c.model.autoencoder = ml_collections.ConfigDict(dict(
        params="", scaling_factor=0.0, sample_posterior=True, dtype="float32", arch=TINY_AE))
  return c


def _xla_flops(fn, *args) -> float:
  return compiled_lib.xla_flops(jax.jit(fn).lower(*args).compile())


def test_conv_taps_skip_padding():
  # 3x3 'same' over 4 pixels: 3 + 3 + 3 + 3 taps minus the 2 that fall on padding.
  assert flops_lib._taps(4, 3, 1, 1) == (4, 10)
  assert flops_lib._taps(4, 3, 2, 1) == (2, 5)
  assert flops_lib.conv(2, 4, 4, 8, 16)[0] == 2 * 2 * 10 * 10 * 8 * 16


def test_forward_counts_match_xla():
  """UNet + prompt encoder (with the resize to the ViT's size) and autoencoder encode / decode:
  the analytic forward FLOPs within 10% of XLA's count of the same computation."""
  config = _wide_tiny()
  config.model.prompt.image_size = 16  # 8-pixel tiles resized for the ViT
  ratio, net, prompt = conftest.forward_flops_vs_xla(config)
  assert prompt.first_layer > 0 and net.first_layer > 0
  assert ratio == pytest.approx(1.0, abs=0.10)

  arch = ae.AutoencoderConfig(**TINY_AE)
  vae = ae.build(arch)
  ae_params = ae.init_params(vae, jax.random.key(1))
  images = jnp.zeros((3, 32, 32, 3))
  xla = _xla_flops(lambda p, x: vae.apply({"params": p}, x, method=ae.AutoencoderKL.encode).mean,
                   ae_params, images)
  assert xla / flops_lib.autoencoder_encode(arch, 3, 32) == pytest.approx(1.0, abs=0.10)
  latents = jnp.zeros((3, 8, 8, 4))
  xla = _xla_flops(lambda p, z: vae.apply({"params": p}, z, method=ae.AutoencoderKL.decode),
                   ae_params, latents)
  assert xla / flops_lib.autoencoder_decode(arch, 3, 8) == pytest.approx(1.0, abs=0.10)


def test_step_counts_follow_remat_and_latent_space():
  plain = flops_lib.train_step(_wide_tiny(), 4)
  assert plain.hardware == plain.model
  remat = flops_lib.train_step(_wide_tiny(remat=True), 4)
  assert remat.model == plain.model and remat.hardware > 1.2 * plain.model
  saved = _wide_tiny(remat=True)
  saved.model.remat_policy = "dots_saveable"
  assert flops_lib.train_step(saved, 4).hardware == plain.model
  unknown = _wide_tiny(remat=True)
  unknown.model.remat_policy = "offload_dot_with_no_batch_dims"
  assert flops_lib.train_step(unknown, 4).hardware is None
  latent = flops_lib.train_step(_wide_tiny(latent=True), 4, ae.AutoencoderConfig(**TINY_AE))
  # 4 grids of 2 x 2 cells, 16 pixels each, encoded forward only.
  assert latent.parts["autoencoder_encode"] == flops_lib.autoencoder_encode(
      ae.AutoencoderConfig(**TINY_AE), 16, 16)
  sample = flops_lib.sample(_wide_tiny(), 2, num_steps=5, guided=True)
  net, _ = flops_lib._networks(_wide_tiny(), 4, remat=False)
  assert sample.parts["unet"] == 5 * net.total


def test_paper_step_count_is_sd_scale():
  """paper_256 per grid: the UNet (SD 1.5's layout on a 64 x 64 latent) costs about 0.8 TFLOP
  forward, the frozen VAE encoder of the four 256-pixel cells about 1.1 TFLOP."""
  config = workload.load_config(os.path.join(ROOT, "configs", "paper_256.py"))
  step = flops_lib.train_step(config, 1, ae.AutoencoderConfig())
  assert 0.75e12 < step.parts["unet"] < 0.85e12
  assert 1.0e12 < step.parts["autoencoder_encode"] < 1.15e12
  assert step.hardware > step.model  # paper_256 rematerialises its blocks


def test_largest_fitting_bisects_to_the_limit():
  calls = []

  def peak(b):
    calls.append(b)
    return 1000 + 300 * b

  found = compiled_lib.largest_fitting(peak, limit_bytes=1000 + 300 * 37 + 10, upper=1024,
                                       log=lambda s: None)
  assert found["max_batch"] == 37
  assert found["peak_bytes_at_max"] <= found["memory_limit_bytes"] < found["peak_bytes_above_max"]
  assert len(calls) == found["compiles"] <= 12 and len(set(calls)) == len(calls)
  at_upper = compiled_lib.largest_fitting(peak, 10**9, upper=6, log=lambda s: None)
  assert at_upper["max_batch"] == 6 and at_upper["peak_bytes_above_max"] is None
  with pytest.raises(ValueError, match="a batch of 1 needs"):
    compiled_lib.largest_fitting(peak, 500, upper=8, log=lambda s: None)


def test_peaks_and_memory():
  class FakeDevice:
    platform = "gpu"
    device_kind = "NVIDIA H100 80GB HBM3"

    def memory_stats(self):
      return {"bytes_limit": 80 * 2**30}

  assert hardware.peak_flops(FakeDevice())[0] == 989e12
  FakeDevice.device_kind = "TPU v5 lite"
  assert hardware.peak_flops(FakeDevice())[0] == 197e12
  FakeDevice.device_kind = "TPU v5p"
  assert hardware.peak_flops(FakeDevice())[0] == 459e12
  assert hardware.memory_bytes(FakeDevice()) == 80 * 2**30
  FakeDevice.device_kind = "Some Accelerator"
  assert hardware.peak_flops(FakeDevice())[0] is None
  cpu_peak, source = hardware.peak_flops(jax.devices("cpu")[0], "float32")
  assert 1e8 < cpu_peak * len(jax.local_devices(backend="cpu")) < 1e14 and "measured" in source
  assert hardware.cpu_backend_warning(100_000_000, "cpu") is None
  assert "make venv-gpu" in hardware.cpu_backend_warning(859_000_000, "cpu")
  assert hardware.cpu_backend_warning(859_000_000, "gpu") is None


def _run(args: list[str], timeout: int = 600, xla_flags: str = "") -> dict:
  """Runs a benchmark on one CPU device, the test flags changed by `xla_flags`; its last line
  parsed."""
  flags = conftest.with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=1).split()
  changed = {f.split("=")[0]: f for f in xla_flags.split()}
  flags = [changed.pop(f.split("=")[0], f) for f in flags] + list(changed.values())
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=" ".join(flags))
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_accelerator_script_at_tiny_size(tmp_path):
  """benchmarks/accelerator.sh (both benchmarks) on latent_tiny with a small autoencoder file,
  rematerialised: XLA's count of the compiled step agrees with the analytic count
  (recomputation included); MFU in (0, 1]; guided edits per second with encode and decode."""
  arch = ae.AutoencoderConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                              norm_num_groups=8)
  ae_file = str(tmp_path / "ae.safetensors")
  autoencoder_params.save(ae_file, ae.init_params(ae.build(arch), jax.random.key(0)), arch,
                          source="random weights")
  out = tmp_path / "out"
  env = dict(os.environ, PY=sys.executable, CONFIG="configs/latent_tiny.py", OUT_DIR=str(out),
             BATCH_PER_DEVICE="4", REMAT_POLICY="nothing_saveable", SAMPLER_BATCH="2",
             TRAIN_STEPS="2", SAMPLER_STEPS="4",
             XLA_FLAGS=conftest.with_test_flags(os.environ.get("XLA_FLAGS", ""), devices=1))
  proc = subprocess.run(["bash", "benchmarks/accelerator.sh",
                         f"--config.model.autoencoder.params={ae_file}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert "cpu" in (out / "device.txt").read_text()
  result = json.loads((out / "train_mfu.json").read_text())
  for key in ("flops_per_step", "step_s", "tflops_per_device", "mfu", "peak_memory_bytes",
              "compile_s", "device"):
    assert result[key] is not None, key
  assert 0 < result["mfu"] <= 1
  assert result["flops_check_ok"], result
  assert result["flops_parts_forward"]["autoencoder_encode"] > 0 and result["remat"]
  assert result["batch_per_device"] == 4 and result["peak_memory_bytes"] > 0
  assert result["tflops_per_device"] == pytest.approx(
      result["flops_per_step"] / result["num_devices"] / result["step_s"] / 1e12, rel=1e-3)
  sampled = json.loads((out / "sampler_throughput.json").read_text())
  assert sampled["latent"] and sampled["batch"] == 2 and sampled["steps"] == 4
  assert sampled["flops_parts"]["autoencoder_decode"] > 0 and 0 < sampled["mfu"] <= 1


def test_train_benchmark_counts_every_micro_batch():
  """With gradient accumulation XLA counts the micro-batch loop's body once: the benchmark scales
  it, so the check reads as without accumulation (and a variant's MFU, from XLA's count, too)."""
  wide = ["--config.model.unet.channels=(64,64)", "--config.model.unet.norm_groups=32",
          "--config.model.prompt.vit.width=64", "--config.model.prompt.mixer.width=64"]
  # Compiled as XLA compiles for the CPU by default, at level 1: the three steps of the wide model
  # then run in about 2 s instead of about 20 s, for about 6 s more of compilation.
  result = _run(["benchmarks/train_mfu.py", "--config", "configs/tiny_test.py",
                 "--batch_per_device", "4", "--steps", "1", "--config.train.grad_accum_steps=2",
                 *wide], xla_flags="--xla_backend_optimization_level=1 "
                                   "--xla_cpu_use_fusion_emitters=true")
  # Within 10% of the analytic count (1.06 without accumulation at these widths; a count of
  # one micro-batch would read about half).
  assert result["grad_accum_steps"] == 2 and result["flops_check_ok"], result
  assert result["xla_to_analytic_ratio"] == pytest.approx(1.06, abs=0.04), result


def test_sampler_throughput_benchmark_at_tiny_size():
  """Edits per second at the largest batch (up to 2) that the compiled memory analysis fits."""
  result = _run(["benchmarks/sampler_throughput.py", "--config", "configs/tiny_test.py",
                 "--find_max_batch", "--max_batch", "2", "--steps", "4", "--repeats", "2"])
  assert result["edits_per_s"] > 0 and result["batch"] == 2 and result["steps"] == 4
  assert result["find_max_batch"]["max_batch"] == 2 and result["find_max_batch"]["compiles"] == 2
  assert result["peak_memory_bytes"] == result["find_max_batch"]["peak_bytes_at_max"]
  assert result["edits_per_s"] == pytest.approx(2 / result["call_s"], rel=1e-2)
  assert 0 < result["mfu"] <= 1 and result["peak_memory_bytes"] > 0
  assert result["flops_parts"]["unet"] > 0


def test_accelerator_installs_pin_the_cpu_jax():
  """make venv-gpu / venv-tpu install jax's accelerator builds at requirements.txt's version."""
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    pins = dict(line.split("#")[0].strip().split("==") for line in f
                if "==" in line.split("#")[0])
  assert pins["jax"] == pins["jaxlib"]
  for target, extra in (("venv-gpu", "cuda12"), ("venv-tpu", "tpu")):
    plan = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert f'"jax[{extra}]=={pins["jax"]}"' in plan, plan
    assert f"imagebrush_jax.hardware --expect {target[5:]}" in plan
  proc = subprocess.run([sys.executable, "-m", "imagebrush_jax.hardware", "--expect", "gpu"],
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1 and "runs on cpu, not gpu" in proc.stdout
  proc = subprocess.run([sys.executable, "-m", "imagebrush_jax.hardware", "--expect", "cpu"],
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0 and " (cpu); peak per device " in proc.stdout, proc.stderr


def test_launch_scripts_need_the_project_environment(tmp_path):
  for script in ("launch/gpu_multinode.sh", "launch/local.sh"):
    proc = subprocess.run(["bash", script, "configs/tiny_test.py", str(tmp_path)], cwd=ROOT,
                          env=dict(os.environ, PY=str(tmp_path / "missing" / "python")),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "make venv" in proc.stderr, proc.stderr
    assert not os.listdir(tmp_path)
