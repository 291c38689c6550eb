"""Plug-ins beside the paper's model, chosen by config.model.variant ('' = the paper's model).

A variant is a function (config, runtime, **config.model.variant_options) -> model.Plugins that
fills the core's extension points (core/model.py); it adds no branch to the core.
"""
from __future__ import annotations

import inspect

import ml_collections

from imagebrush_jax.core import model as model_lib
from imagebrush_jax.models import runtime as runtime_lib
from imagebrush_jax.core.plugins import cpu_demo

VARIANTS = {"cpu_demo": cpu_demo.plugins}


def plugins(config: ml_collections.ConfigDict,
            runtime: runtime_lib.Runtime) -> model_lib.Plugins:
  """The plug-ins of config.model.variant with config.model.variant_options; none for ''."""
  name = config.model.variant
  options = dict(config.model.variant_options or {})
  if not name:
    if options:
      raise ValueError(f"config.model.variant_options {sorted(options)} given without "
                       f"config.model.variant")
    return model_lib.Plugins()
  if name not in VARIANTS:
    raise ValueError(f"config.model.variant must be '' (the paper's model) or one of "
                     f"{sorted(VARIANTS)}, got {name!r}")
  make = VARIANTS[name]
  accepted = [p.name for p in inspect.signature(make).parameters.values()
              if p.kind == inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"config.model.variant_options has {unknown}, which variant {name!r} does "
                     f"not take (it takes {accepted})")
  return make(config, runtime, **options)
