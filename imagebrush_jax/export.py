"""Exports a trained run as one file: its EMA parameters (the frozen autoencoder's included) and
its config, in a safetensors file (no pickle), which `infer` and `evaluate` take as --params
instead of --workdir and edit with exactly as from the checkpoint.

  python -m imagebrush_jax.export --workdir runs/demo --output model.safetensors [--step N]
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.inference import run_loading


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.export` (defined when it runs, never at import)."""
  cli.define_run_selector_flags(flag_values, exported=False)
  flags.DEFINE_string("output", None, "The .safetensors file to write (atomically).",
                      flag_values=flag_values)
  flags.mark_flags_as_required(["output"], flag_values=flag_values)


def main(argv: Sequence[str]) -> int:
  """`python -m imagebrush_jax.export` in this process, `argv` its flags: the exit status (a
  usage error exits, status 2, as the program does)."""
  return cli.call_program(define_flags, program, argv, "imagebrush_jax.export")


def program(args: flags.FlagValues) -> int:
  """Exports the run the parsed flags `args` choose; returns the exit status."""
  selection = cli.selected_run(args)
  try:
    files.check_access(args.output)
    run = run_loading.load_run(selection.workdir, selection.step)
    run_loading.save_params_file(run, args.output)
  except cli.USER_ERRORS as e:  # pylint: disable=catching-non-exception
    return cli.report(e)
  count = ckpt_lib.param_count(run.params)
  print(f"exported step {run.step} of {selection.workdir} ({count / 1e6:.2f}M parameters) to "
        f"{args.output}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  cli.run_program(define_flags, program)
