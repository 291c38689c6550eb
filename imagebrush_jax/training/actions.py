"""The training loop's periodic actions: each has one job, and the loop (loop.py) calls every
one of them after every step.

  Profile      a jax.profiler trace of config.train.profile_steps
  Metrics      the one-step-late NaN check, and the means of each log interval to the console,
               TensorBoard and the JSONL history
  Evaluation   evaluator.run at config.train.eval_every steps and at the end
  Preemption   whether to stop after this step: SIGTERM agreed between the processes
  Checkpoint   saves at config.checkpoint.every steps, the last step and on preemption
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.training import metric_writers
from imagebrush_jax.training import preemption

State = dict[str, Any]
StepMetrics = dict[str, jax.Array]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the run stops without saving the bad state."""


class PeriodicAction:
  """One job of the training loop. Steps are numbered by the state's step counter."""

  def before_step(self, step: int) -> None:
    """Called before the step that takes the state from `step` to step + 1."""
    del step

  def __call__(self, step: int, state: State, metrics: StepMetrics) -> bool | None:
    """Called after the step that brought the state to `step`, with that step's metrics (still
    on the device). True stops training after this step; the actions after this one still run."""
    raise NotImplementedError


def every_n_steps(every: int, last_step: int) -> Callable[[int], bool]:
  """A schedule: every `every` steps, and `last_step`."""
  return lambda step: step % every == 0 or step == last_step


class Profile(PeriodicAction):
  """A jax.profiler trace into `logdir` of the steps from `profile_steps` = (start, stop):
  the steps taking the state from step start to step stop. () traces nothing."""

  def __init__(self, profile_steps: Sequence[int], logdir: str):
    self.start, self.stop = _profile_window(profile_steps)
    self.logdir = logdir
    self._tracing = False

  def before_step(self, step: int) -> None:
    if step == self.start:
      jax.profiler.start_trace(self.logdir)
      self._tracing = True

  def __call__(self, step: int, state: State, metrics: StepMetrics) -> None:
    if step == self.stop and self._tracing:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._tracing = False


class Metrics(PeriodicAction):
  """The training metrics, read one step late: the step after has been dispatched by then, so
  reading them costs no stall. A non-finite loss stops the run (NonFiniteLossError). Every
  `log_every` steps and at `last_step` the interval's means go to the console progress line,
  TensorBoard (train/* and the rates) and the JSONL history."""

  def __init__(self, *, log_every: int, last_step: int, total_steps: int,
               progress: metric_writers.ProgressLine, writer: metric_writers.MetricWriter,
               history: metric_writers.JsonlHistory):
    self.log_every, self.last_step, self.total_steps = log_every, last_step, total_steps
    self.progress, self.writer, self.history = progress, writer, history
    self._pending: tuple[int, StepMetrics] | None = None  # the latest step's, not yet read
    self._sums: dict[str, float] = {}
    self._count = 0

  def __call__(self, step: int, state: State, metrics: StepMetrics) -> None:
    del state
    if self._pending is not None:  # the previous step's metrics are ready by now
      self._add(*self._pending)
    self._pending = (step, metrics)
    if step % self.log_every == 0 or step == self.last_step:
      self.check_pending()
      means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
      line, rates = self.progress.line(step, {"loss": means.get("loss", float("nan"))})
      metric_writers.log_line(line)
      self.writer.write_scalars(step, {**{f"train/{k}": v for k, v in means.items()}, **rates})
      self.history.append(step, {**means, **rates})
      self._sums, self._count = {}, 0

  def check_pending(self) -> None:
    """Reads and checks the latest step's metrics now (waiting for them)."""
    if self._pending is not None:
      pending, self._pending = self._pending, None
      self._add(*pending)

  def _add(self, step: int, metrics: StepMetrics) -> None:
    """Adds one step's metrics to the interval's sums; stops the run on a non-finite loss."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values["loss"]):
      raise NonFiniteLossError(
          f"loss is {values['loss']} at step {step} of {self.total_steps}; stopping. The last "
          f"checkpoint before it is kept. Lower config.train.learning_rate or check the data.")
    for k, v in values.items():
      self._sums[k] = self._sums.get(k, 0.0) + v
    self._count += 1


class Evaluation(PeriodicAction):
  """evaluator.run(step, state) every `every` steps, and at `total_steps` if `at_end`."""

  def __init__(self, evaluator: Any, *, every: int, total_steps: int, at_end: bool):
    self.evaluator = evaluator
    self.every, self.total_steps, self.at_end = every, total_steps, at_end

  def __call__(self, step: int, state: State, metrics: StepMetrics) -> None:
    if step % self.every == 0 or (step == self.total_steps and self.at_end):
      self.evaluator.run(step, state)


class Preemption(PeriodicAction):
  """Stops training after the step at which every process agrees that one of them received
  SIGTERM (preemption.StopFlag: agreed every config.train.stop_check_every steps, and at the
  steps `force_check` names)."""

  def __init__(self, flag: preemption.StopFlag, force_check: Callable[[int], bool]):
    self.flag, self.force_check = flag, force_check
    self.stopping = False

  def __call__(self, step: int, state: State, metrics: StepMetrics) -> bool:
    self.stopping = self.flag.agreed(step, force_check=self.force_check(step))
    return self.stopping


class Checkpoint(PeriodicAction):
  """Saves the state and the data iterator's position at the steps `due` names and at the
  step preemption stops at, each only once its loss is checked; every save also flushes the
  training history and the TensorBoard writer."""

  def __init__(self, checkpointer: ckpt_lib.Checkpointer, data_iterator: Any,
               config: ml_collections.ConfigDict, *, due: Callable[[int], bool],
               metrics: Metrics, preemption_action: Preemption,
               history: metric_writers.JsonlHistory, writer: metric_writers.MetricWriter):
    self.checkpointer, self.data_iterator, self.config = checkpointer, data_iterator, config
    self.due, self.metrics, self.preemption = due, metrics, preemption_action
    self.history, self.writer = history, writer

  def __call__(self, step: int, state: State, metrics: StepMetrics) -> None:
    stopping = self.preemption.stopping
    if self.due(step) or stopping:
      self.metrics.check_pending()  # never save a state whose loss was not checked
      self.checkpointer.save(step, state, self.data_iterator, self.config, force=True)
      self.history.flush()  # every record up to a checkpoint is kept (uploaded, in a bucket)
      self.writer.flush()
    if stopping:
      metric_writers.log_line(f"stopped by SIGTERM at step {step}; checkpoint saved")


def _profile_window(profile_steps: Sequence[int]) -> tuple[int, int]:
  """(start, stop) of config.train.profile_steps (checked by TrainOptions); () is (-1, -1)."""
  if not profile_steps:
    return -1, -1
  start, stop = (int(s) for s in profile_steps)
  return start, stop
