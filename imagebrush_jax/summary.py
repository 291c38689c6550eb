"""Parameter counts of a config's model, from shapes only (nothing is allocated).

  python -m imagebrush_jax.summary --config configs/paper_256.py [--config.key=value ...]

Prints one line per component (total, UNet, prompt encoder and its ViT / mixer / other parts,
plug-ins) and, last, one JSON line with the config file and the counts.
"""
from __future__ import annotations

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from imagebrush_jax.core import summary
from imagebrush_jax.infra import cli


def define_flags(flag_values: flags.FlagValues) -> None:
  """The flags of `python -m imagebrush_jax.summary` (defined when it runs, never at import)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                  flag_values=flag_values)


def program(args: flags.FlagValues) -> None:
  """Prints the parameter counts of the model of the parsed flags' --config."""
  config = args.config
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/paper_256.py")
  counts = summary.param_counts(config)
  for name, n in counts.items():
    print(f"{name:>16}: {n:>13,d}  ({n / 1e6:8.2f}M)")
  print(json.dumps(dict(config=config_flags.get_config_filename(args["config"]), **counts)))


if __name__ == "__main__":
  cli.run_program(define_flags, program)
