"""Metric writers: TensorBoard event files (tensorboardX, no TensorFlow needed; in a gs://
workdir each flush uploads the event file whole), a JSONL history and a console line with step,
loss, steps/s, examples/s and ETA. Only process 0 writes."""
from __future__ import annotations

import json
import time
from typing import Mapping

from absl import logging
import jax
import numpy as np

from imagebrush_jax.infra import files


class MetricWriter:
  """Scalars and images to TensorBoard under WORKDIR/tensorboard (process 0 only)."""

  def __init__(self, logdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(logdir=logdir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: name -> uint8 [N, H, W, 3] (or [H, W, 3])."""
    if self._writer is None:
      return
    for name, image in images.items():
      image = np.asarray(image)
      if image.ndim == 3:
        image = image[None]
      self._writer.add_images(name, image, global_step=int(step), dataformats="NHWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class ProgressLine:
  """Console progress: rates measured over the interval since the last report.

  With `flops_per_step` (the global batch's FLOPs) the rates add the achieved TFLOP/s per device
  over `num_devices` devices, and with `peak_flops` (one device's peak FLOP/s) the MFU.
  """

  def __init__(self, total_steps: int, examples_per_step: int, first_step: int = 0, *,
               flops_per_step: float | None = None, num_devices: int = 1,
               peak_flops: float | None = None):
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self.flops_per_device_step = flops_per_step / num_devices if flops_per_step else None
    self.peak_flops = peak_flops
    self._last_step = first_step
    self._last_time = time.perf_counter()
    self.start_time = self._last_time

  def rates(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = max(step - self._last_step, 0)
    seconds = max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    steps_per_s = steps / seconds
    rates = {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * self.examples_per_step}
    if self.flops_per_device_step:
      rates["tflops_per_device"] = self.flops_per_device_step * steps_per_s / 1e12
      if self.peak_flops:
        rates["mfu"] = rates["tflops_per_device"] * 1e12 / self.peak_flops
    return rates

  def line(self, step: int, metrics: Mapping[str, float]) -> tuple[str, dict[str, float]]:
    rates = self.rates(step)
    left = self.total_steps - step
    eta = left / rates["steps_per_s"] if rates["steps_per_s"] > 0 else float("inf")
    parts = [f"step {step}/{self.total_steps}"]
    parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
    parts += [f"{rates['steps_per_s']:.2f} steps/s", f"{rates['examples_per_s']:.1f} ex/s"]
    if "tflops_per_device" in rates:
      parts.append(f"{rates['tflops_per_device']:.4g} TFLOP/s/device")
    if "mfu" in rates:
      parts.append(f"MFU {100 * rates['mfu']:.1f}%")
    parts.append(f"ETA {_fmt_seconds(eta)}")
    return " | ".join(parts), rates


def _fmt_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def log_line(text: str) -> None:
  if jax.process_index() == 0:
    logging.info("%s", text)
    print(text, flush=True)


class JsonlHistory:
  """Appends {"step", "wall_s", metrics...} lines to a JSONL file (process 0 only).

  A files.LineLog: a crash never leaves a partial record behind an earlier good one, locally
  or in a bucket (uploaded at most every `flush_secs` there, and on flush()); a resumed run
  keeps appending to the same file.
  """

  def __init__(self, path, flush_secs: float = 0.0):
    self.path = path
    self.enabled = jax.process_index() == 0
    self._log = files.LineLog(path, flush_secs) if self.enabled else None
    self._start = time.perf_counter()

  def flush(self) -> None:
    if self._log is not None:
      self._log.flush()

  def append(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "wall_s": round(time.perf_counter() - self._start, 3),
              **{k: float(v) for k, v in metrics.items()}}
    self._log.append(json.dumps(record))
