"""Preemption: SIGTERM sets a flag, and every process stops at the same agreed step."""
from __future__ import annotations

import os
import signal

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class StopFlag:
  """Set by SIGTERM (preemption); the loop saves and exits at an agreed step boundary.

  One process stops at the next step. Several processes must stop at the same step, which
  takes a blocking collective: they agree only every `check_every` steps and at steps the
  caller forces (checkpoint steps, the last step), not behind every step.
  """

  def __init__(self, check_every: int = 1):
    self.raised = False
    self.check_every = max(int(check_every), 1)
    self._previous = None

  def install(self):
    if os.name == "posix":
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread (e.g. inside some test runners)
        pass

  def uninstall(self):
    """Puts back the handler that install replaced (training called from a longer program)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: checkpointing and stopping at the next agreed step")
    self.raised = True

  def agreed(self, step: int, force_check: bool = False) -> bool:
    """Whether every process stops after `step`: True if any one of them was signalled.

    Every process calls this at every step with the same arguments, so all of them enter
    the collective at the same steps.
    """
    if jax.process_count() == 1:
      return self.raised
    if step % self.check_every and not force_check:
      return False
    flags_all = multihost_utils.process_allgather(np.array(self.raised, np.int32))
    return bool(np.any(flags_all))
