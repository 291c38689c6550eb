"""What every program of this project shares: absl flags, the run flags and the run selector,
quiet library logs, and usage, configuration or input errors printed as one line `error: ...`
(exit status 2) instead of a traceback or a usage text (a non-finite loss, which stops a run,
likewise, with exit status 1).

    if __name__ == "__main__":
      cli.run(main)                       # main(argv), its flags defined above this line
    if __name__ == "__main__":
      cli.run_training_program(train_and_evaluate)  # --config, --workdir, multi-host flags
    if __name__ == "__main__":
      cli.run_program(define_flags, program)  # define_flags(flag_values), program(flag_values)

A program of the last form also runs in-process, its flags on a fresh absl FlagValues each call
(what tests do): `call_program(define_flags, program, ["--workdir", "runs/demo", ...])` returns
its exit status. Flags are defined only when a program runs, never when a module is imported.
The run selector (define_run_selector_flags, selected_run) is --workdir (a training run folder)
at --step, or --params (a run exported by `python -m imagebrush_jax.export`).

--verbosity=1 shows library INFO logs and, for an error, its traceback.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import files
from imagebrush_jax.infra import parallel

# The flags that this module's functions define belong to the program calling them (its --help).
flags.disclaim_key_flags()

USAGE_ERROR = 2  # exit status of a configuration or input error, as argparse's
# Errors that describe the user's config, files or run folder: their message is the report.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError,
               ckpt_lib.CheckpointCorruptError, files.StorageAccessError)


class RunFlags:
  """The flags every training program takes, defined on construction (only when a program
  runs), as attributes after parsing."""

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


def flag_error_message(error: flags.Error) -> str:
  """absl's message of a flag error on one line; a required flag left out says so."""
  message = " ".join(str(error).split())
  missing = re.fullmatch(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.",
                         message)
  return f"--{missing.group(1)} is required" if missing else message


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """flag_values(argv) (argv[0]: the program's name); a flag error (unknown flag, bad value,
  required flag left out) is printed as one line `error: ...`, exit status 2."""
  try:
    return flag_values(list(argv))
  except flags.Error as e:
    sys.exit(fail(flag_error_message(e)))


def _no_arguments(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")


def _call(main: Callable[[Any], Any], arg: Any) -> Any:
  """main(arg), an error of the user's reported in one line: a usage error (app.UsageError) or
  one of USER_ERRORS exits with status 2, a non-finite loss with status 1."""
  try:
    return main(arg)
  except app.UsageError as e:
    sys.exit(fail(str(e)))
  except USER_ERRORS as e:  # pylint: disable=catching-non-exception
    sys.exit(report(e))
  except FloatingPointError as e:  # a NaN / inf loss: the run stopped, naming the step
    report(e)
    sys.exit(1)


def run(main: Callable[[list[str]], Any]) -> None:
  """app.run(main) with library logs at WARNING unless --verbosity is given, and flag errors,
  usage errors (app.UsageError) and user errors (USER_ERRORS) reported in one line with exit
  status 2."""

  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    return _call(main, argv)

  app.run(wrapped, flags_parser=lambda argv: parse_flags(flags.FLAGS, argv))


DefineFlags = Callable[[flags.FlagValues], Any]
Program = Callable[[flags.FlagValues], int | None]


def run_program(define_flags: DefineFlags, program: Program) -> None:
  """The whole of a program (for its `if __name__ == "__main__":` block): define_flags(FLAGS)
  defines its flags on absl's FLAGS, then program(FLAGS), its exit status returned, runs under
  run(). Positional arguments are a usage error."""
  define_flags(flags.FLAGS)

  def main(argv):
    _no_arguments(argv)
    return program(flags.FLAGS)

  run(main)


def call_program(define_flags: DefineFlags, program: Program, argv: Sequence[str],
                 name: str = "program") -> int:
  """The program of run_program in this process, on `argv` (its flags, without the program's
  name), its flags defined on a fresh absl FlagValues, so that it may be called again: returns
  the exit status. A flag, usage or user error exits as the program does: its one line printed,
  SystemExit(2)."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  rest = parse_flags(flag_values, [name, *argv])

  def main(rest):
    _no_arguments(rest)
    return program(flag_values)

  status = _call(main, rest)
  return 0 if status is None else int(status)


# ---------------------------------------------------------------------------- the run selector


def define_run_selector_flags(flag_values: flags.FlagValues = flags.FLAGS, *,
                              exported: bool = True) -> None:
  """Defines the flags that choose the trained run a program uses: --workdir, a training run
  folder, at --step (default: its latest checkpoint), or, with `exported`, --params, a run
  exported by `python -m imagebrush_jax.export`. selected_run reads them."""
  flags.DEFINE_string("workdir", None,
                      "Training run folder" + (" (or --params)." if exported else "."),
                      flag_values=flag_values)
  if exported:
    flags.DEFINE_string("params", None, "A run exported by python -m imagebrush_jax.export, "
                        "in place of --workdir.", flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).",
                       flag_values=flag_values)


@dataclasses.dataclass(frozen=True)
class RunSelection:
  """The run chosen on the command line: a run folder at a step, or an exported file; load it
  with imagebrush_jax.inference.run_loading.load(workdir, params, step)."""
  workdir: str | None
  params: str | None
  step: int | None

  @property
  def source(self) -> str:
    """The folder or file, as given (for messages)."""
    return self.workdir if self.workdir is not None else self.params


def selected_run(flag_values: flags.FlagValues = flags.FLAGS) -> RunSelection:
  """The run that the flags of define_run_selector_flags choose, after parsing; app.UsageError
  unless exactly one of --workdir and --params is given, or for --step with --params."""
  workdir = flag_values["workdir"].value
  params = flag_values["params"].value if "params" in flag_values else None
  step = flag_values["step"].value
  if "params" not in flag_values:
    if workdir is None:
      raise app.UsageError("--workdir is required")
  elif (workdir is None) == (params is None):
    raise app.UsageError("give a run folder (--workdir) or an exported file (--params)"
                         + (", not both" if workdir is not None else ""))
  elif params is not None and step is not None:
    raise app.UsageError("--step chooses a checkpoint of a run folder (--workdir); an exported "
                         "file (--params) holds one set of parameters")
  return RunSelection(workdir=workdir, params=params, step=step)


def run_training_program(train_and_evaluate: Callable[[Any, str], Any]) -> None:
  """The whole of a training program: defines --config, --workdir and the multi-host flags,
  starts the distributed runtime, and runs train_and_evaluate(config, workdir) under run()."""
  run_flags = RunFlags()  # --config, --workdir and the multi-host flags

  def main(argv):
    _no_arguments(argv)
    parallel.initialize_distributed(run_flags.coordinator_address, run_flags.num_processes,
                                    run_flags.process_id)
    train_and_evaluate(run_flags.config, run_flags.workdir)

  run(main)
