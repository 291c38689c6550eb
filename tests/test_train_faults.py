"""Failure paths of training: SIGTERM agreed between hosts without a collective behind every
step, kill -9 during an asynchronous checkpoint write, a damaged checkpoint and
config.checkpoint.restore_step, a NaN loss at a checkpoint step, and classifier-free
guidance training its null token.

The loop tests run loop.run_training (the real loop, checkpointer and train step) on a small
network with an rng-free loss and a checkpointable iterator: seconds where the tiny ImageBrush
takes a compilation of tens of seconds. The SIGTERM test on the real model through the CLI
is in test_train.py (it shares that file's uninterrupted reference run).
"""
import functools
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny_test
from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.training import loop
from imagebrush_jax.training import options as training_options
from imagebrush_jax.training import preemption
from imagebrush_jax.training import train_state
from imagebrush_jax.data import pipeline
from imagebrush_jax.core import build as build_lib
from imagebrush_jax.core import objective as objective_lib
from tests.test_train_state import mlp_error
from tests.test_train_state import mlp_init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_SUFFIX = ".orbax-checkpoint-tmp"


# ====================================================================== a small task
class _Batches:
  """Host batches of a regression problem; batch i is a pure function of i, so the iterator
  state is one integer (saved as bytes, as grain's handler expects of other iterators).

  poison_at: the batch whose loss is NaN; sigterm_at: the batch whose fetch signals this
  process with SIGTERM (the step that uses it still runs).
  """

  def __init__(self, config, process_index=0, process_count=1, *, poison_at=-1, sigterm_at=-1):
    self.rows = config.train.batch_size // process_count
    self.offset = process_index * self.rows
    self.index = 0
    self.poison_at, self.sigterm_at = poison_at, sigterm_at

  def __iter__(self):
    return self

  def __next__(self):
    self.index += 1
    if self.index == self.sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)
    rng = np.random.default_rng(self.index)
    x = rng.normal(size=(self.rows * 8, 6)).astype(np.float32)
    rows = slice(self.offset, self.offset + self.rows)
    return {"x": x.reshape(-1, 8, 6)[rows], "y": np.tanh(x[:, :3]).reshape(-1, 8, 3)[rows],
            "poison": np.full((self.rows,), self.index == self.poison_at, np.float32)}

  def get_state(self):
    return json.dumps({"index": self.index}).encode()

  def set_state(self, state):
    self.index = json.loads(state)["index"]

  def start_prefetch(self):  # called by grain's handler after a restore
    pass


def _task(options) -> train_state.Trainable:
  def loss_fn(params, batch, rng, is_train):
    del rng, is_train
    loss = jnp.mean(mlp_error(params, batch) ** 2)
    return loss + jnp.where(batch["poison"].sum() > 0, jnp.nan, 0.0), {}

  return train_state.make_trainable(train_state.Objective(init_params=mlp_init, loss_fn=loss_fn),
                                    options.train, options.seed)


class _NoEval:
  def __init__(self, *args):
    del args

  def run(self, step, state):
    del step, state


def _config(num_steps=6, every=2):
  config = tiny_test.get_config()
  config.train.num_steps = num_steps
  config.train.log_every = 1
  config.train.warmup_steps = 1
  config.train.learning_rate = 1e-2
  config.checkpoint.every = every
  return config


def _train(config, workdir, **batches):
  options = training_options.LoopOptions.from_config(config)
  return loop.run_training(config, str(workdir), options=options,
                           build_trainable=functools.partial(_task, options),
                           make_train_iterator=functools.partial(_Batches, config, **batches),
                           make_evaluator=_NoEval)


def _history(workdir):
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _steps(workdir):
  checkpointer = ckpt_lib.Checkpointer(str(workdir), tiny_test.get_config().checkpoint)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def _assert_trees_equal(a, b, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol), a, b)


# ====================================================================== SIGTERM
def test_multi_host_stop_is_agreed_every_n_steps_and_at_forced_steps(monkeypatch):
  calls = []
  others = [0]  # the other process's flag

  def allgather(flag):
    calls.append(step)
    return np.array([int(flag), others[0]])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(preemption.multihost_utils, "process_allgather", allgather)
  flag = preemption.StopFlag(check_every=10)
  for step in range(1, 31):  # no signal: a collective at 10, 20, 30 and the forced 25 only
    assert not flag.agreed(step, force_check=step == 25)
  assert calls == [10, 20, 25, 30]
  # This process is signalled at step 33: it carries on to the next agreed step with the
  # others and stops there, as does a process that was not signalled itself.
  flag._handler(signal.SIGTERM, None)  # pylint: disable=protected-access
  stops = [step for step in range(31, 45) if flag.agreed(step)]
  assert stops[0] == 40
  quiet = preemption.StopFlag(check_every=10)
  others[0] = 1
  assert [step for step in range(31, 45) if quiet.agreed(step)][0] == 40
  assert quiet.agreed(36, force_check=True)  # a checkpoint step before it

  # One process: stops at once, no collective.
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  calls.clear()
  alone = preemption.StopFlag(check_every=10)
  alone._handler(signal.SIGTERM, None)  # pylint: disable=protected-access
  step = 3
  assert alone.agreed(step) and not calls


def test_sigterm_stops_one_process_at_that_step_and_checks_at_checkpoints(tmp_path,
                                                                          monkeypatch):
  """The loop: SIGTERM during step 3 saves step 3 and returns; agreement is forced at
  checkpoint steps; the caller's SIGTERM handler is put back afterwards."""
  seen = []
  agreed = preemption.StopFlag.agreed

  def spy(self, step, force_check=False):
    seen.append((step, force_check))
    return agreed(self, step, force_check)

  monkeypatch.setattr(preemption.StopFlag, "agreed", spy)
  before = signal.getsignal(signal.SIGTERM)
  config = _config(num_steps=6, every=2)
  config.train.stop_check_every = 10
  state = _train(config, tmp_path, sigterm_at=3)
  assert int(state["step"]) == 3
  assert seen == [(1, False), (2, True), (3, False)]
  assert _steps(tmp_path) == [2, 3]
  assert signal.getsignal(signal.SIGTERM) is before


# ====================================================================== kill -9 mid-save
_KILLED_DURING_SAVE = """
import asyncio, os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
from orbax.checkpoint._src.path import atomicity
import test_train_faults as t
from imagebrush_jax.infra import checkpoint as ckpt_lib

finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize_later(self):  # step 4's write stays in flight until the kill
  if self.get_final().name == "4":
    await asyncio.sleep(600)
  await finalize(self)

atomicity.AtomicRenameTemporaryPath.finalize = finalize_later
save = ckpt_lib.Checkpointer.save

def save_then_die(self, step, *args, **kwargs):
  saved = save(self, step, *args, **kwargs)
  if step == 4:
    os.kill(os.getpid(), signal.SIGKILL)
  return saved

ckpt_lib.Checkpointer.save = save_then_die
t._train(t._config(), sys.argv[1])
"""


def test_kill_during_async_save_resumes_from_last_complete_checkpoint(tmp_path, capsys):
  workdir = tmp_path / "run"
  script = _KILLED_DURING_SAVE.format(root=ROOT, tests=os.path.join(ROOT, "tests"))
  proc = subprocess.run([sys.executable, "-c", script, str(workdir)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stdout[-2000:] + proc.stderr[-4000:]
  names = os.listdir(workdir / "checkpoints")
  assert "2" in names and "4" not in names, names
  assert any(n.startswith("4" + TMP_SUFFIX) for n in names), names  # the partial write
  assert _steps(workdir) == [2]

  state = _train(_config(), workdir)
  assert "resumed from step 2 " in capsys.readouterr().out
  assert int(state["step"]) == 6
  assert _steps(workdir) == [2, 4, 6]
  assert not [n for n in os.listdir(workdir / "checkpoints") if TMP_SUFFIX in n]

  # The resumed run retrains steps 3 and 4 exactly, and ends where an unbroken one does.
  history = _history(workdir)
  assert [r["step"] for r in history] == [1, 2, 3, 4, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in history[4:6]],
                             [r["loss"] for r in history[2:4]], rtol=1e-6)
  reference = _train(_config(), tmp_path / "reference")
  np.testing.assert_allclose([r["loss"] for r in history[4:]],
                             [r["loss"] for r in _history(tmp_path / "reference")[2:]],
                             rtol=1e-6)
  _assert_trees_equal(jax.device_get(state["params"]), jax.device_get(reference["params"]))


# ====================================================================== damaged checkpoint
def _truncate_array_data(step_dir) -> int:
  """Cuts every array data file (ocdbt's d/ folders) to one byte; metadata stays intact."""
  count = 0
  for root, _, names in os.walk(step_dir):
    if os.path.basename(root) == "d":
      for name in names:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(1)
        count += 1
  return count


def test_damaged_checkpoint_names_its_step_and_restore_step_resumes_before_it(tmp_path,
                                                                             capsys):
  config = _config(num_steps=6, every=2)
  _train(config, tmp_path)
  _, unbroken = ckpt_lib.load_arrays(str(tmp_path), 6)
  assert _truncate_array_data(tmp_path / "checkpoints" / "6") > 0

  with pytest.raises(ckpt_lib.CheckpointCorruptError) as err:
    _train(config, tmp_path)
  text = str(err.value)
  assert f"checkpoint step 6 in {tmp_path / 'checkpoints' / '6'} is damaged or unreadable" in text
  assert "--config.checkpoint.restore_step=4" in text

  config.checkpoint.restore_step = 5
  with pytest.raises(FileNotFoundError, match=r"config\.checkpoint\.restore_step=5: no such "
                     r"checkpoint .* \(it has steps \[2, 4, 6\]\)"):
    _train(config, tmp_path)

  capsys.readouterr()
  config.checkpoint.restore_step = 4
  state = _train(config, tmp_path)
  out = capsys.readouterr().out
  assert "newer checkpoints [6] moved to" in out and "resumed from step 4 " in out
  assert int(state["step"]) == 6
  assert os.listdir(tmp_path / "checkpoints_set_aside") == ["6"]
  assert _steps(tmp_path) == [2, 4, 6]
  _, again = ckpt_lib.load_arrays(str(tmp_path), 6)
  _assert_trees_equal(again["params"], unbroken["params"])

  # The next plain start resumes from the new step 6.
  config.checkpoint.restore_step = -1
  config.train.num_steps = 7
  assert int(_train(config, tmp_path)["step"]) == 7
  assert "resumed from step 6 " in capsys.readouterr().out


# ====================================================================== NaN
@pytest.mark.parametrize("bad_step", [3, 4, 6])
def test_nan_at_a_checkpoint_step_saves_nothing_for_it(bad_step, tmp_path):
  """Step 3 is between checkpoints; step 4 is a checkpoint step; step 6 is also the last."""
  with pytest.raises(loop.NonFiniteLossError, match=f"loss is nan at step {bad_step} of 6"):
    _train(_config(num_steps=6, every=2), tmp_path, poison_at=bad_step)
  assert _steps(tmp_path) == list(range(2, bad_step, 2))
  assert [r["step"] for r in _history(tmp_path)] == list(range(1, bad_step))


# ====================================================================== guidance
def test_null_token_gets_gradient_only_from_dropped_prompts():
  """cfg_drop_rate 1.0: every prompt is the null token, which gets gradient while the prompt
  encoder's other parameters get none; 0.0: the null token gets exactly none.

  The UNet's output convolution and attention projections start at zero, which hides every
  gradient upstream of them; the parameters are perturbed as after some training. One UNet
  level, and gradients of the prompt encoder's parameters only, keep the two compilations
  short: the prompt path is what is under test.
  """
  config = tiny_test.get_config()
  config.model.unet.channels = (16,)
  config.model.unet.attention = ("cross",)
  config.model.unet.mid_attention = "cross"
  model = build_lib.build_model(config)  # cfg_drop_rate only enters the loss
  leaves, treedef = jax.tree.flatten(build_lib.init_params(model, config, jax.random.key(0)))
  params = jax.tree.unflatten(treedef, [
      p + 0.02 * np.random.default_rng(i).normal(size=p.shape).astype(np.float32)
      for i, p in enumerate(leaves)])
  batch = pipeline.make_eval_batches(config, num_grids=4, seed=0, batch_size=4)[0]
  batch = {k: batch[k] for k in ("grid", "mask", "box")}
  grads = {}
  for rate in (1.0, 0.0):
    config.model.cfg_drop_rate = rate
    loss_fn = objective_lib.make_loss_fn(model, config)

    def prompt_loss(prompt_params, loss_fn=loss_fn):
      return loss_fn({**params, "prompt_encoder": prompt_params}, batch, jax.random.key(1),
                     True)[0]

    grads[rate] = jax.device_get(jax.jit(jax.grad(prompt_loss))(params["prompt_encoder"]))
  dropped, kept = grads[1.0], grads[0.0]
  assert np.abs(dropped["null_token"]).max() > 1e-6
  assert np.all(kept["null_token"] == 0)
  encoder = {k: v for k, v in dropped.items() if k != "null_token"}
  assert all(np.all(g == 0) for g in jax.tree.leaves(encoder))  # the prompt was replaced ...
  assert max(np.abs(g).max() for g in jax.tree.leaves(kept["vit"])) > 1e-6  # ... else used


def test_a_bad_data_config_stops_the_run_before_its_workdir_is_made(tmp_path):
  """Config errors of every kind (train keys, the model, the data) stop a run before it writes
  anything: here a task the data source does not have."""
  config = _config()
  config.data.train_tasks = ("hflip", "no_such_task")
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"config.data.train_tasks\[1\] = 'no_such_task'"):
    options = training_options.LoopOptions.from_config(config)
    loop.run_training(config, str(workdir), options=options,
                      build_trainable=functools.partial(_task, options),
                      make_train_iterator=functools.partial(pipeline.make_train_iterator, config),
                      make_evaluator=_NoEval)
  assert not workdir.exists()
