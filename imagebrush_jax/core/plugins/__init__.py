"""Plug-ins beside the paper's model, chosen by config.model.variant ('' = the paper's model).

A variant is a function (spec, runtime, **config.model.variant_options) -> model.Plugins that
fills the core's extension points (core/model.py); it adds no branch to the core.
"""
from __future__ import annotations

from typing import Any

from imagebrush_jax.core import model as model_lib
from imagebrush_jax.models import runtime as runtime_lib
from imagebrush_jax.core.plugins import cpu_demo

VARIANTS = {"cpu_demo": cpu_demo.plugins}


def plugins(spec: Any, runtime: runtime_lib.Runtime) -> model_lib.Plugins:
  """The plug-ins of config.model.variant with config.model.variant_options (both checked by
  core/options.py); none for ''. `spec` is the model's ImageBrushSpec."""
  name = spec.model.variant
  if not name:
    return model_lib.Plugins()
  return VARIANTS[name](spec, runtime, **spec.model.variant_options)
