"""The training system end to end on configs/tiny_test.py: learning, sharding equivalence,
multi-host equivalence, exact resume (after stop_at_step and after SIGTERM; in a gs:// bucket
after SIGKILL: test_cloud_storage.py), and a clear stop on a mismatched checkpoint
(test_train_faults.py has the NaN and damaged-checkpoint stops)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import conftest
from configs import tiny_test
from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax import train
from imagebrush_jax.perf import flops as flops_lib
from imagebrush_jax.perf import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int) -> dict:
  env = dict(os.environ)  # keeps conftest's compilation cache: same programs compile once
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {conftest.TEST_XLA_FLAGS}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT
  return env


def _cli(workdir, overrides=(), devices=1, processes=1):
  """(command, environment) that train tiny_test through the CLI (launch/local.sh for several
  processes)."""
  args = [f"--config.{k}={v}" for k, v in (("train.eval_at_end", False), *overrides)]
  if processes == 1:
    cmd = [sys.executable, "-m", "imagebrush_jax.train", "--config", "configs/tiny_test.py",
           "--workdir", str(workdir), *args]
    env = _env(devices)
  else:
    cmd = ["bash", "launch/local.sh", "configs/tiny_test.py", str(workdir), *args]
    env = _env(devices)
    env.update(PY=sys.executable, NUM_PROCESSES=str(processes),
               DEVICES_PER_PROCESS=str(devices), PORT=str(12000 + os.getpid() % 2000))
  return cmd, env


def _run_cli(workdir, overrides=(), devices=1, processes=1):
  """Trains tiny_test through the CLI; fails the test on a non-zero exit."""
  cmd, env = _cli(workdir, overrides, devices, processes)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def _history(workdir):
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir):
  step, state = ckpt_lib.load_arrays(str(workdir))
  return step, state["params"], state["ema_params"]


def _assert_trees_close(a, b, atol):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  worst = max(float(np.max(np.abs(x - y))) for x, y in zip(flat_a, flat_b))
  assert worst <= atol, f"max abs parameter difference {worst} > {atol}"


STEPS = [("train.num_steps", 20), ("train.log_every", 1), ("checkpoint.every", 10)]
SHARDED = [("mesh.data", 2), ("mesh.fsdp", 2)]


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  """20 steps on 1 device, logging every step: the reference for the equivalence tests."""
  workdir = tmp_path_factory.mktemp("single")
  _run_cli(workdir, STEPS, devices=1)
  return workdir


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
  """The same 20 steps on 4 devices, data=2 x fsdp=2, in one process."""
  workdir = tmp_path_factory.mktemp("sharded")
  _run_cli(workdir, STEPS + SHARDED, devices=4)
  return workdir


def test_tiny_training_loss_falls(tmp_path, capsys, monkeypatch):
  """The loss falls; the log reports the compiled step and each interval's TFLOP/s and MFU."""
  monkeypatch.setattr(hardware, "LARGE_MODEL_PARAMS", 1000)  # tiny_test counts as large here
  config = tiny_test.get_config()
  config.train.num_steps = 60
  config.train.log_every = 10
  train.train_and_evaluate(config, str(tmp_path))
  history = _history(tmp_path)
  losses = [r["loss"] for r in history]
  assert len(losses) == 6
  assert losses[-1] < 0.75 * losses[0], losses
  log = capsys.readouterr().out
  assert "parameters on the CPU backend" in log and "make venv-gpu" in log
  assert "train step compiled in" in log and "GiB (arguments" in log
  assert "TFLOP/s/device | MFU" in log
  # The analytic FLOPs of the global batch over the measured step rate, per device.
  flops = flops_lib.train_step(config, config.train.batch_size).model
  for record in history:
    assert 0 < record["mfu"] <= 1
    assert record["tflops_per_device"] == pytest.approx(
        flops * record["steps_per_s"] / jax.device_count() / 1e12, rel=1e-6)
  assert os.path.exists(tmp_path / "samples" / "step_0000060.png")
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))


def test_four_sharded_devices_match_one(single_device_run, sharded_run):
  ref, got = _history(single_device_run), _history(sharded_run)
  assert [r["step"] for r in got] == list(range(1, 21))
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-4)
  _, p_ref, e_ref = _final_params(single_device_run)
  _, p_got, e_got = _final_params(sharded_run)
  _assert_trees_close(p_got, p_ref, atol=1e-4)
  _assert_trees_close(e_got, e_ref, atol=1e-4)


def test_two_processes_match_one_process(sharded_run, tmp_path):
  """2 processes x 2 devices (gloo on 127.0.0.1) against 1 process x 4 devices."""
  _run_cli(tmp_path, STEPS + SHARDED, devices=2, processes=2)
  ref, got = _history(sharded_run), _history(tmp_path)
  assert [r["step"] for r in got] == list(range(1, 21))
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-5)
  _, p_ref, _ = _final_params(sharded_run)
  _, p_got, _ = _final_params(tmp_path)
  _assert_trees_close(p_got, p_ref, atol=1e-5)


def run_and_signal_when(cmd, env, ready, sig, what: str):
  """Runs `cmd` and sends it `sig` once ready() holds; returns (returncode, stdout, stderr).
  Fails if the run ends first, or if `what` is not seen within 300 s."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  try:
    while not ready():
      assert proc.poll() is None, f"the run ended before {what}"
      assert time.monotonic() < deadline, f"{what} not seen within 300 s"
      time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, out, err


def _train_until_sigterm(workdir, overrides, after_step: int):
  """Runs the CLI and sends it SIGTERM once `after_step` is logged; returns its stdout."""
  cmd, env = _cli(workdir, overrides, devices=1)
  history = workdir / "train_metrics.jsonl"

  def last_logged_step():  # complete lines only: the run may be writing the next one
    lines = history.read_text().split("\n")[:-1] if history.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0

  code, out, err = run_and_signal_when(cmd, env, lambda: last_logged_step() >= after_step,
                                       signal.SIGTERM, f"step {after_step} was logged")
  assert code == 0, out[-3000:] + err[-5000:]
  return out


def test_resume_after_stop_at_step_and_sigterm_reproduces_uninterrupted_run(
    single_device_run, tmp_path):
  """Stopped by config at step 10, then by SIGTERM at whatever step past 12 it reached:
  each stop saves that step (SIGTERM: exit 0), and the run resumed from each gives the
  uninterrupted run's per-step losses and final parameters."""
  def latest_checkpoint():
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path), tiny_test.get_config().checkpoint)
    step = checkpointer.latest_step()
    checkpointer.close()
    return step

  _run_cli(tmp_path, STEPS + [("train.stop_at_step", 10)], devices=1)
  assert latest_checkpoint() == 10

  out = _train_until_sigterm(tmp_path, STEPS, after_step=12)
  assert "resumed from step 10 " in out
  stopped = _history(tmp_path)[-1]["step"]
  assert 12 <= stopped < 20, f"stopped at {stopped}: the signal came too late to test anything"
  assert f"stopped by SIGTERM at step {stopped}; checkpoint saved" in out
  assert latest_checkpoint() == stopped

  resumed = _run_cli(tmp_path, STEPS, devices=1)
  assert f"resumed from step {stopped} " in resumed.stdout
  ref, got = _history(single_device_run), _history(tmp_path)
  # Same data order and same updates: identical per-step losses, then identical parameters.
  assert [r["step"] for r in got] == list(range(1, 21))
  np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-6)
  _, p_ref, e_ref = _final_params(single_device_run)
  step, p_got, e_got = _final_params(tmp_path)
  assert step == 20
  _assert_trees_close(p_got, p_ref, atol=1e-6)
  _assert_trees_close(e_got, e_ref, atol=1e-6)


def test_mismatched_checkpoint_is_refused(single_device_run, tmp_path):
  config = tiny_test.get_config()
  config.train.num_steps = 20
  wider = tuple(2 * c for c in config.model.unet.channels)
  # Copy the reference run's checkpoints, then ask for a wider UNet in the same workdir.
  subprocess.run(["cp", "-r", str(single_device_run / "checkpoints"), str(tmp_path)], check=True)
  config.model.unet.channels = wider
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="different shape"):
    train.train_and_evaluate(config, str(tmp_path))
