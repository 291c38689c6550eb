"""What every absl program of this project shares: the run flags, quiet library logs, and
configuration or input errors printed as one line (exit status 2) instead of a traceback (a
non-finite loss, which stops a run, likewise, with exit status 1).

    if __name__ == "__main__":
      cli.run(main)                       # a program with its own flags
    if __name__ == "__main__":
      cli.run_training_program(train_and_evaluate)  # --config, --workdir, multi-host flags

--verbosity=1 shows library INFO logs and, for an error, its traceback.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel

USAGE_ERROR = 2  # exit status of a configuration or input error, as argparse's
# Errors that describe the user's config, files or run folder: their message is the report.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
               ckpt_lib.CheckpointCorruptError, files.StorageAccessError)


class RunFlags:
  """The flags every training program takes, as attributes after parsing."""

  def __init__(self):
    self._config = config_flags.DEFINE_config_file("config", None, "Config file (.py).",
                                                   lock_config=True)
    self._workdir = flags.DEFINE_string("workdir", None,
                                        "Folder for checkpoints, logs and samples.")
    self._coordinator = flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0 for multi-host runs (or JAX_COORDINATOR_ADDRESS).")
    self._num_processes = flags.DEFINE_integer("num_processes", None,
                                               "Processes in a multi-host run.")
    self._process_id = flags.DEFINE_integer("process_id", None, "This process's index.")
    flags.mark_flags_as_required(["config", "workdir"])

  config = property(lambda self: self._config.value)
  workdir = property(lambda self: self._workdir.value)
  coordinator_address = property(lambda self: self._coordinator.value)
  num_processes = property(lambda self: self._num_processes.value)
  process_id = property(lambda self: self._process_id.value)


def load_config_file(path: str, what: str = "--config") -> Any:
  """get_config() of a config file, read as --config of the training programs reads it (the
  configs import `configs`, so the repository root joins the import path)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location("config_file", path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"{what} {path} not found")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def define_run_flags() -> RunFlags:
  """Defines --config, --workdir and the multi-host flags (call only when run as a program)."""
  return RunFlags()


def error_message(error: BaseException) -> str:
  """The message of an error, without KeyError's quotes."""
  if isinstance(error, KeyError) and len(error.args) == 1:
    return str(error.args[0])
  return str(error) or type(error).__name__


def fail(message: str) -> int:
  """Prints `error: <message>` on stderr; returns the exit status of a user error."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  return USAGE_ERROR


def report(error: BaseException) -> int:
  """fail() with the error's message (the traceback only at --verbosity >= 1)."""
  logging.debug("traceback of the error below", exc_info=error)
  return fail(error_message(error))


def run(main: Callable[[list[str]], Any]) -> None:
  """app.run(main) with library logs at WARNING unless --verbosity is given, and user errors
  (USER_ERRORS) reported in one line with exit status 2."""

  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except USER_ERRORS as e:  # pylint: disable=catching-non-exception
      sys.exit(report(e))
    except FloatingPointError as e:  # a NaN / inf loss: the run stopped, naming the step
      report(e)
      sys.exit(1)

  app.run(wrapped)


def run_training_program(train_and_evaluate: Callable[[Any, str], Any]) -> None:
  """The whole of a training program: defines --config, --workdir and the multi-host flags,
  starts the distributed runtime, and runs train_and_evaluate(config, workdir) under run()."""
  run_flags = define_run_flags()

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    parallel.initialize_distributed(run_flags.coordinator_address, run_flags.num_processes,
                                    run_flags.process_id)
    train_and_evaluate(run_flags.config, run_flags.workdir)

  run(main)
