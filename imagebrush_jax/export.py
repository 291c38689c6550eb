"""Exports a trained run as one file: its EMA parameters (the frozen autoencoder's included) and
its config, in a safetensors file (no pickle), which `infer` and `evaluate` take as --params
instead of --workdir and edit with exactly as from the checkpoint.

  python -m imagebrush_jax.export --workdir runs/demo --output model.safetensors [--step N]
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from imagebrush_jax.infra import checkpoint as ckpt_lib
from imagebrush_jax.infra import cli
from imagebrush_jax.infra import files
from imagebrush_jax.inference import run_loading


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m imagebrush_jax.export",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="training run folder")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--output", required=True, help="the .safetensors file to write (atomically)")
  args = p.parse_args(argv)
  try:
    files.check_access(args.output)
    run = run_loading.load_run(args.workdir, args.step)
    run_loading.save_params_file(run, args.output)
  except cli.USER_ERRORS as e:  # pylint: disable=catching-non-exception
    return cli.report(e)
  count = ckpt_lib.param_count(run.params)
  print(f"exported step {run.step} of {args.workdir} ({count / 1e6:.2f}M parameters) to "
        f"{args.output}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
