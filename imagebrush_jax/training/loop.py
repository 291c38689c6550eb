"""The training loop shared by every model this project trains: a sharded, jitted step fed by a
checkpointable input iterator, with logging, periodic evaluation, checkpoints (resume is
data-exact), profiling, a NaN stop and preemption.

    run_training(config, workdir, options=LoopOptions.from_config(config),
                 build_trainable=..., make_train_iterator=..., make_evaluator=...)

setup() builds the run (mesh, state restored or initialised, data, writers, evaluator); the
step is compiled ahead of time; train_steps() runs it and after each step calls the periodic
actions of actions.py (profile, metrics, evaluation, preemption, checkpoint).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from etils import epath
import jax
from jax.sharding import Mesh
import ml_collections

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel
from imagebrush_jax.perf import compiled as compiled_lib
from imagebrush_jax.perf import hardware
from imagebrush_jax.training import actions
from imagebrush_jax.training import metric_writers
from imagebrush_jax.training import preemption
from imagebrush_jax.training import train_state
from imagebrush_jax.training.options import LoopOptions

State = dict[str, Any]
# In a gs:// workdir the training history is uploaded whole at most this often, and at every
# checkpoint (locally each record is appended at once).
HISTORY_FLUSH_SECS = 30.0

NonFiniteLossError = actions.NonFiniteLossError


@dataclasses.dataclass
class Run:
  """What setup() builds for run_training; close() releases it."""
  config: ml_collections.ConfigDict  # as saved with every checkpoint
  options: LoopOptions
  workdir: epath.Path
  mesh: Mesh
  task: train_state.Trainable
  train_step: Any  # jitted, not yet compiled
  state: State | None  # restored or initialised, until take_state()
  first_step: int
  last_step: int  # config.train.num_steps, or config.train.stop_at_step if earlier
  train_iter: Any  # the checkpointable host-batch iterator
  checkpointer: ckpt_lib.Checkpointer
  writer: metric_writers.MetricWriter
  history: metric_writers.JsonlHistory
  evaluator: Any
  _peeked: Any = dataclasses.field(default=None, repr=False)

  def take_state(self) -> State:
    """The state, handed over: the first step donates it, so the run keeps no reference."""
    state, self.state = self.state, None
    return state

  def peek_batch(self) -> Any:
    """The batch next_batch() returns next (fetched now, if not yet)."""
    if self._peeked is None:
      self._peeked = parallel.host_batch_to_global(next(self.train_iter), self.mesh)
    return self._peeked

  def next_batch(self) -> Any:
    """The next global batch, split over the mesh."""
    batch, self._peeked = self.peek_batch(), None
    return batch

  def close(self) -> None:
    self.history.flush()
    self.checkpointer.close()
    self.writer.close()
    if hasattr(self.train_iter, "close"):
      self.train_iter.close()  # stops grain worker processes


def run_training(config: ml_collections.ConfigDict, workdir: str, *, options: LoopOptions,
                 build_trainable: Callable[[], train_state.Trainable],
                 make_train_iterator: Callable[..., Any],
                 make_evaluator: Callable[..., Any]) -> State:
  """The generic loop, shared by every model this project trains; returns the last state.

  `config` is what checkpoints record; `options` what the loop reads (parsed from it where the
  program starts). build_trainable() -> Trainable; make_train_iterator(process_index=,
  process_count=) -> a checkpointable host-batch iterator; make_evaluator(task, mesh,
  workdir_path, writer) -> an object whose run(step, state) evaluates.
  """
  tc = options.train
  # Installed before setup, so a SIGTERM while the run is built (or compiled) still saves and
  # stops after the first step instead of killing the process.
  stop_flag = preemption.StopFlag(tc.stop_check_every)
  stop_flag.install()
  try:
    run = setup(config, workdir, options=options, build_trainable=build_trainable,
                make_train_iterator=make_train_iterator, make_evaluator=make_evaluator)
    try:
      profile = actions.Profile(tc.profile_steps, str(run.workdir / "profile"))
      step_fn, flops_per_step = run.train_step, None
      if run.first_step < run.last_step:  # compiled ahead of time, to report its cost first
        step_fn, flops_per_step = _compile_step(run.train_step, run.state, run.peek_batch(),
                                                run.task, run.writer, run.first_step)
      periodic = [profile, *_periodic_actions(run, stop_flag, flops_per_step)]
      return train_steps(step_fn, run.take_state(), run.first_step, run.last_step,
                         run.next_batch, periodic)
    finally:
      run.close()
  finally:
    stop_flag.uninstall()


def train_steps(step_fn: Callable[[State, Any], tuple[State, Any]], state: State,
                first_step: int, last_step: int, next_batch: Callable[[], Any],
                periodic: Sequence[actions.PeriodicAction]) -> State:
  """Runs step_fn from first_step to last_step, calling the periodic actions around each step;
  stops early where one of them asks to. Returns the last state."""
  step = first_step
  while step < last_step:
    for action in periodic:
      action.before_step(step)
    state, metrics = step_fn(state, next_batch())
    step += 1
    stop = False
    for action in periodic:
      stop = bool(action(step, state, metrics)) or stop
    if stop:
      break
  return state


def setup(config: ml_collections.ConfigDict, workdir: str, *, options: LoopOptions,
          build_trainable: Callable[[], train_state.Trainable],
          make_train_iterator: Callable[..., Any],
          make_evaluator: Callable[..., Any]) -> Run:
  """Builds the mesh, the trainable, the state (restored from the checkpoint to resume from,
  else initialised), the data iterator, the writers and the evaluator; writes
  WORKDIR/config.json on a fresh start."""
  files.check_access(workdir)  # a bucket without credentials stops here, naming the bucket
  workdir_path = files.as_path(workdir)
  tc = options.train

  # ------------------------------------------------------------ devices and mesh
  mesh = parallel.make_mesh(options.mesh)
  parallel.local_batch_size(tc.batch_size)  # validates divisibility early
  metric_writers.log_line(
      f"devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: "
      f"{jax.process_count()}, mesh: {dict(mesh.shape)}")

  # ------------------------------------------------------------ model, optimizer, state
  task = build_trainable()  # its files' errors stop the run before the workdir is made
  # ------------------------------------------------------------ data (its errors too)
  train_iter = make_train_iterator(process_index=jax.process_index(),
                                   process_count=jax.process_count())
  files.makedirs(workdir_path)
  abstract_state, state_shardings = train_state.state_shapes_and_shardings(
      task, mesh, options.mesh, jax.random.key(options.seed))
  train_step = train_state.jit_train_step(task, mesh, state_shardings)
  num_params = ckpt_lib.param_count(abstract_state["params"])
  metric_writers.log_line(f"model: {num_params / 1e6:.2f}M parameters")
  warning = hardware.cpu_backend_warning(num_params)
  if warning:
    metric_writers.log_line(warning)

  # ------------------------------------------------------------ checkpoint / resume
  checkpointer = ckpt_lib.Checkpointer(workdir, options.checkpoint, remove_partial_saves=True)
  resume_step = _resume_step(checkpointer, options.checkpoint.restore_step)
  if resume_step is not None:
    target = ckpt_lib.abstract_with_shardings(abstract_state, state_shardings)
    state = checkpointer.restore(resume_step, target, train_iter)
    metric_writers.log_line(f"resumed from step {resume_step} in {checkpointer.directory}")
  else:
    state = train_state.init_sharded_state(task, state_shardings, jax.random.key(options.seed))
  first_step = int(jax.device_get(state["step"]))

  # ------------------------------------------------------------ writers and evaluator
  writer = metric_writers.MetricWriter(str(workdir_path / "tensorboard"))
  if first_step == 0 and jax.process_index() == 0:
    files.write_text_atomic(workdir_path / "config.json", config.to_json_best_effort(indent=2))
    writer.write_scalars(0, {"params_millions": num_params / 1e6})
  history = metric_writers.JsonlHistory(workdir_path / "train_metrics.jsonl",
                                        flush_secs=HISTORY_FLUSH_SECS)
  evaluator = make_evaluator(task, mesh, workdir_path, writer)
  return Run(config=config, options=options, workdir=workdir_path, mesh=mesh, task=task,
             train_step=train_step,
             state=state, first_step=first_step, last_step=tc.last_step, train_iter=train_iter,
             checkpointer=checkpointer, writer=writer, history=history, evaluator=evaluator)


def _periodic_actions(run: Run, stop_flag: preemption.StopFlag,
                      flops_per_step: float | None) -> list[actions.PeriodicAction]:
  """The actions after each step, in the order they run: metrics, evaluation, preemption,
  checkpoint."""
  tc = run.options.train
  peak_flops, _ = hardware.peak_flops(jax.devices()[0], run.task.objective.compute_dtype)
  progress = metric_writers.ProgressLine(tc.num_steps, tc.batch_size, run.first_step,
                                         flops_per_step=flops_per_step,
                                         num_devices=jax.device_count(), peak_flops=peak_flops)
  metrics = actions.Metrics(log_every=tc.log_every, last_step=run.last_step,
                            total_steps=tc.num_steps, progress=progress, writer=run.writer,
                            history=run.history)
  evaluation = actions.Evaluation(run.evaluator, every=tc.eval_every, total_steps=tc.num_steps,
                                  at_end=tc.eval_at_end)
  checkpoint_due = actions.every_n_steps(run.options.checkpoint.every, run.last_step)
  stop = actions.Preemption(stop_flag, force_check=checkpoint_due)
  checkpoint = actions.Checkpoint(run.checkpointer, run.train_iter, run.config,
                                  due=checkpoint_due, metrics=metrics, preemption_action=stop,
                                  history=run.history, writer=run.writer)
  return [metrics, evaluation, stop, checkpoint]


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
  tc = task.train
  analytic = task.flops_per_step
  if analytic is not None:
    return compiled, float(analytic(int(tc.batch_size)))
  if stats.flops is None:
    return compiled, None
  return compiled, stats.flops * jax.device_count() * int(tc.grad_accum_steps)


def _resume_step(checkpointer: ckpt_lib.Checkpointer, wanted: int) -> int | None:
  """The step to resume from: config.checkpoint.restore_step (`wanted`) if set (>= 0), else
  the latest (or None).

  Checkpoints newer than an explicit restore_step are set aside, so the steps trained again
  save normally and a later plain start resumes from them, not from the set-aside ones.
  """
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
