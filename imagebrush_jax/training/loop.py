"""The training loop shared by every model this project trains: a sharded, jitted step fed by a
checkpointable input iterator, with logging, periodic evaluation, checkpoints (resume is
data-exact), profiling, a NaN stop and preemption.

    run_training(config, workdir, build_trainable=..., make_train_iterator=...,
                 make_evaluator=...)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import hardware
from imagebrush_jax.training import config_validation
from imagebrush_jax.training import metric_writers
from imagebrush_jax.training import preemption
from imagebrush_jax.training import train_state

State = dict[str, Any]
# In a gs:// workdir the training history is uploaded whole at most this often, and at every
# checkpoint (locally each record is appended at once).
HISTORY_FLUSH_SECS = 30.0


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the run stops without saving the bad state."""


def run_training(config: ml_collections.ConfigDict, workdir: str, *,
                 build_trainable: Callable[[ml_collections.ConfigDict], train_state.Trainable],
                 make_train_iterator: Callable[..., Any],
                 make_evaluator: Callable[..., Any]) -> State:
  """The generic loop, shared by every model this project trains.

  build_trainable(config) -> Trainable; make_train_iterator(config, process_index=,
  process_count=) -> a checkpointable host-batch iterator; make_evaluator(config, task,
  mesh, workdir_path, writer) -> an object whose run(step, state) evaluates.
  """
  config_validation.validate(config)
  files.check_access(workdir)  # a bucket without credentials stops here, naming the bucket
  workdir_path = files.as_path(workdir)
  tc = config.train

  # ------------------------------------------------------------ devices and mesh
  mesh = parallel.make_mesh(config.mesh)
  parallel.local_batch_size(tc.batch_size)  # validates divisibility early
  metric_writers.log_line(
      f"devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: "
      f"{jax.process_count()}, mesh: {dict(mesh.shape)}")

  # ------------------------------------------------------------ model, optimizer, state
  task = build_trainable(config)  # model config errors stop the run before the workdir is made
  files.makedirs(workdir_path)
  abstract_state, state_shardings = train_state.state_shapes_and_shardings(
      task, mesh, config.sharding, jax.random.key(config.seed))
  train_step = train_state.jit_train_step(task, mesh, state_shardings)
  num_params = ckpt_lib.param_count(abstract_state["params"])
  metric_writers.log_line(f"model: {num_params / 1e6:.2f}M parameters")
  warning = hardware.cpu_backend_warning(num_params)
  if warning:
    metric_writers.log_line(warning)

  # ------------------------------------------------------------ data
  train_iter = make_train_iterator(config, process_index=jax.process_index(),
                                            process_count=jax.process_count())

  # ------------------------------------------------------------ checkpoint / resume
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint, remove_partial_saves=True)
  resume_step = _resume_step(checkpointer, config.checkpoint)
  if resume_step is not None:
    target = ckpt_lib.abstract_with_shardings(abstract_state, state_shardings)
    state = checkpointer.restore(resume_step, target, train_iter)
    metric_writers.log_line(f"resumed from step {resume_step} in {checkpointer.directory}")
  else:
    state = train_state.init_sharded_state(task, state_shardings, jax.random.key(config.seed))
  first_step = int(jax.device_get(state["step"]))

  # ------------------------------------------------------------ logging and hooks
  writer = metric_writers.MetricWriter(str(workdir_path / "tensorboard"))
  if first_step == 0 and jax.process_index() == 0:
    files.write_text_atomic(workdir_path / "config.json", config.to_json_best_effort(indent=2))
    writer.write_scalars(0, {"params_millions": num_params / 1e6})
  last_step = tc.num_steps if tc.stop_at_step < 0 else min(tc.stop_at_step, tc.num_steps)
  next_batch = lambda: parallel.host_batch_to_global(next(train_iter), mesh)
  history = metric_writers.JsonlHistory(workdir_path / "train_metrics.jsonl",
                                        flush_secs=HISTORY_FLUSH_SECS)
  evaluator = make_evaluator(config, task, mesh, workdir_path, writer)
  stop = preemption.StopFlag(tc.stop_check_every)
  stop.install()
  profile_start, profile_stop = _profile_window(tc.profile_steps)

  # ------------------------------------------------------------ steps
  step = first_step
  pending = None  # (step, metrics) of the previous step, checked one step late
  metric_sums: dict[str, float] = {}
  metric_count = 0
  try:
    batch = next_batch() if step < last_step else None
    flops_per_step = None
    if batch is not None:  # compiled ahead of time, to report what it costs before it runs
      train_step, flops_per_step = _compile_step(train_step, state, batch, task, writer, step)
    peak_flops, _ = hardware.peak_flops(jax.devices()[0], task.objective.compute_dtype)
    progress = metric_writers.ProgressLine(tc.num_steps, tc.batch_size, first_step,
                                           flops_per_step=flops_per_step,
                                           num_devices=jax.device_count(), peak_flops=peak_flops)
    while step < last_step:
      if step == profile_start:
        jax.profiler.start_trace(str(workdir_path / "profile"))
      if batch is None:
        batch = next_batch()
      state, metrics = train_step(state, batch)
      batch = None
      step += 1
      if step == profile_stop:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()

      # The previous step's metrics are ready by now: checking them costs no stall.
      if pending is not None:
        metric_count += _accumulate(metric_sums, pending, tc.num_steps)
      pending = (step, metrics)

      if step % tc.log_every == 0 or step == last_step:
        metric_count += _accumulate(metric_sums, pending, tc.num_steps)
        pending = None
        means = {k: v / max(metric_count, 1) for k, v in metric_sums.items()}
        line, rates = progress.line(step, {"loss": means.get("loss", float("nan"))})
        metric_writers.log_line(line)
        writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()}, **rates})
        history.append(step, {**means, **rates})
        metric_sums, metric_count = {}, 0

      if step % tc.eval_every == 0 or (step == tc.num_steps and tc.eval_at_end):
        evaluator.run(step, state)

      checkpoint_step = step % config.checkpoint.every == 0 or step == last_step
      stopping = stop.agreed(step, force_check=checkpoint_step)
      if checkpoint_step or stopping:
        if pending is not None:  # never save a state whose loss was not checked
          metric_count += _accumulate(metric_sums, pending, tc.num_steps)
          pending = None
        checkpointer.save(step, state, train_iter, config, force=True)
        history.flush()  # every record up to a checkpoint is kept (uploaded, in a bucket)
        writer.flush()
      if stopping:
        metric_writers.log_line(f"stopped by SIGTERM at step {step}; checkpoint saved")
        break
  finally:
    try:
      history.flush()
      checkpointer.close()
      writer.close()
      if hasattr(train_iter, "close"):
        train_iter.close()  # stops grain worker processes
    finally:
      stop.uninstall()
  return state


def _compile_step(train_step, state: State, batch: Any, task: train_state.Trainable,
                  writer: metric_writers.MetricWriter, step: int) -> tuple[Any, float | None]:
  """(the step compiled for these shapes and shardings, the global batch's FLOPs per step),
  logging the compile time and the compiled memory analysis.

  FLOPs are the task's analytic count where it has one (the model FLOPs of MFU), else XLA's
  count of the compiled step over all devices (whose micro-batch loop body it counts once).
  """
  compiled, stats = compiled_lib.compile_with_stats(train_step.lower(state, batch))
  metric_writers.log_line(f"train step {stats.summary()}")
  writer.write_scalars(step, {"compile/seconds": stats.compile_s,
                              "compile/peak_memory_gib": stats.peak_bytes / compiled_lib.GIB})
  tc = task.train_config
  analytic = task.flops_per_step
  if analytic is not None:
    return compiled, float(analytic(int(tc.batch_size)))
  if stats.flops is None:
    return compiled, None
  return compiled, stats.flops * jax.device_count() * int(tc.grad_accum_steps)


def _resume_step(checkpointer: ckpt_lib.Checkpointer,
                 ckpt_config: ml_collections.ConfigDict) -> int | None:
  """The step to resume from: config.checkpoint.restore_step if set, else the latest (or None).

  Checkpoints newer than an explicit restore_step are set aside, so the steps trained again
  save normally and a later plain start resumes from them, not from the set-aside ones.
  """
  wanted = int(ckpt_config.restore_step)
  if wanted < 0:
    return checkpointer.latest_step()
  steps = checkpointer.all_steps()
  if wanted not in steps:
    raise FileNotFoundError(
        f"config.checkpoint.restore_step={wanted}: no such checkpoint in "
        f"{checkpointer.directory} (it has steps {steps or 'none'})")
  moved = checkpointer.set_aside_after(wanted)
  if moved:
    metric_writers.log_line(
        f"config.checkpoint.restore_step={wanted}: newer checkpoints {moved} moved to "
        f"{checkpointer.set_aside_directory}")
  return wanted


def _accumulate(sums: dict[str, float], pending, total_steps: int) -> int:
  """Adds one step's metrics to the running sums; stops the run on a non-finite loss."""
  step, metrics = pending
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not np.isfinite(values["loss"]):
    raise NonFiniteLossError(
        f"loss is {values['loss']} at step {step} of {total_steps}; stopping. The last "
        f"checkpoint before it is kept. Lower config.train.learning_rate or check the data.")
  for k, v in values.items():
    sums[k] = sums.get(k, 0.0) + v
  return 1


def _profile_window(profile_steps) -> tuple[int, int]:
  if not profile_steps:
    return -1, -1
  start, stop = (int(s) for s in profile_steps)
  if not 0 <= start < stop:
    raise ValueError(f"config.train.profile_steps must be (start, stop) with 0 <= start < stop, "
                     f"got {tuple(profile_steps)}")
  return start, stop
