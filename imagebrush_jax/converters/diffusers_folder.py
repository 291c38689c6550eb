"""diffusers model folders: finding one, reading its weights, and reporting keys that do not fit.

A diffusers model folder holds `config.json` and `diffusion_pytorch_model.safetensors` (or the
shards a `diffusion_pytorch_model.safetensors.index.json` lists); a whole pipeline folder holds
one per component in sub-folders (`unet/`, `vae/`, ...). Pickled PyTorch files are never read.
"""
from __future__ import annotations

import json
from typing import Iterable, Mapping

import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.converters import params_file

WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = WEIGHTS + ".index.json"
CONFIG = "config.json"


class ConversionError(ValueError):
  """The input does not convert; the message names the file and the offending keys."""


def resolve_folder(folder: str, component: str, what: str) -> str:
  """The folder holding the model's config.json: `folder` itself or its `component/` sub-folder
  (a pipeline folder). `what` names the expected model in errors."""
  if files.isfile(files.join(folder, CONFIG)):
    return folder
  if files.isfile(files.join(folder, component, CONFIG)):
    return files.join(folder, component)
  if not files.isdir(folder):
    raise ConversionError(f"{folder} is not a folder (expected a diffusers {what} folder with "
                          f"{CONFIG} and {WEIGHTS})")
  raise ConversionError(f"{folder} has no {CONFIG} (nor {component}/{CONFIG}); expected a "
                        f"diffusers {what} folder with {CONFIG} and {WEIGHTS}")


def read_weights(folder: str) -> dict[str, np.ndarray]:
  """The folder's tensors: one safetensors file or the shards its index lists."""
  single, index = files.join(folder, WEIGHTS), files.join(folder, WEIGHTS_INDEX)
  if files.isfile(single):
    return params_file.read_safetensors(single)[0]
  if files.isfile(index):
    try:
      shards = sorted(set(json.loads(files.read_bytes(index))["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as e:
      raise ConversionError(f"{index}: not a safetensors index ({e})") from e
    try:
      paths = [files.join_inside(folder, shard, f"{index} weight_map") for shard in shards]
    except ValueError as e:
      raise ConversionError(str(e)) from e
    state = {}
    for path in paths:
      state.update(params_file.read_safetensors(path)[0])
    return state
  others = sorted(n for n in files.listdir(folder) if n.endswith((".bin", ".pt", ".ckpt", ".pth")))
  hint = (f"; found {', '.join(others)}: pickled PyTorch files are not read (unsafe), re-save "
          f"them as safetensors" if others else "")
  raise ConversionError(f"{folder} has no {WEIGHTS}{hint}")


def to_flax_layout(value: np.ndarray, leaf: str, want_shape: tuple[int, ...]) -> np.ndarray:
  """One PyTorch tensor in the Flax layout of parameter `leaf` ('kernel' | 'scale' | 'bias')."""
  value = np.asarray(value, np.float32)
  if leaf == "kernel" and value.ndim == 4 and len(want_shape) == 2 and value.shape[2:] == (1, 1):
    value = value[:, :, 0, 0]  # a 1x1 conv standing in for a linear layer
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if leaf == "kernel" and value.ndim == 2:
    return value.T  # [out, in] -> [in, out]
  return value


def key_mismatch_error(header: str, missing: Iterable[str], extra: Iterable[str],
                       reshaped: Iterable[str], limit: int = 30) -> ConversionError | None:
  """One error listing missing keys, unexpected keys and shape mismatches; None if all fit."""
  groups = [(title, sorted(items)) for title, items in (("missing key(s)", missing),
                                                         ("unexpected key(s)", extra),
                                                         ("shape mismatch(es)", reshaped))]
  if not any(items for _, items in groups):
    return None
  lines = [header]
  for title, items in groups:
    if items:
      lines.append(f"  {len(items)} {title}:")
      lines.extend(f"    {item}" for item in items[:limit])
      if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
  return ConversionError("\n".join(lines))


def config_value(cfg: Mapping, key: str, default):
  """cfg[key], or `default` where the key is absent or null (diffusers' own reading)."""
  value = cfg.get(key)
  return default if value is None else value
