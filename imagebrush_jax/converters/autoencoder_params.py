"""Autoencoder parameter files (converted SD VAE or trained here): save and load, shape-checked.

The format is params_file's with kind 'autoencoder_kl' and the AutoencoderConfig as its
architecture, so a file carries everything needed to rebuild the module.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from imagebrush_jax.converters import params_file
from imagebrush_jax.models import autoencoder as ae

KIND = "autoencoder_kl"


def save(path: str | os.PathLike, params: Mapping[str, Any], arch: ae.AutoencoderConfig, *,
         source: str) -> None:
  """Writes `params` (a float32 'params' tree for `arch`) atomically, checking its shapes."""
  params_file.check_tree(params, ae.param_shapes(ae.build(arch)), "the parameters to save")
  params_file.save(path, params, kind=KIND, architecture=arch.to_dict(), source=source)


def load(path: str | os.PathLike) -> tuple[dict[str, Any], ae.AutoencoderConfig]:
  """(params as float32 numpy, architecture) of an autoencoder file; errors name the file."""
  params, arch_dict, _ = params_file.load(path, KIND)
  try:
    arch = ae.AutoencoderConfig.from_dict(arch_dict, where=f"{os.fspath(path)}: architecture")
  except (ValueError, TypeError) as e:
    raise params_file.ParamsFileError(str(e)) from e
  params_file.check_tree(params, ae.param_shapes(ae.build(arch)), os.fspath(path))
  return params, arch
