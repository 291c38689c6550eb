"""diffusers AutoencoderKL folder (Stable Diffusion's VAE) -> this project's autoencoder params.

Input: a diffusers-format folder, `config.json` + `diffusion_pytorch_model.safetensors` (or a
sharded `diffusion_pytorch_model.safetensors.index.json`); a whole pipeline folder with a `vae/`
sub-folder works too. The architecture follows config.json. Every PyTorch tensor maps to exactly
one Flax parameter: module paths are the same with list indices joined by '_'
(`encoder.down_blocks.0.resnets.1.conv1.weight` -> `encoder/down_blocks_0/resnets_1/conv1/kernel`),
conv weights go OIHW -> HWIO, linear weights [out, in] -> [in, out], norm weights -> `scale`.
The attention names of older diffusers files (query/key/value/proj_attn) and 1x1-conv-shaped
attention weights are accepted. Missing tensors, unexpected tensors and shape mismatches are one
error that lists them all.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.converters import diffusers_folder
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters.diffusers_folder import CONFIG, WEIGHTS, ConversionError
from imagebrush_jax.models import autoencoder as ae

__all__ = ["CONFIG", "WEIGHTS", "ConversionError", "convert", "convert_state_dict"]

_DOWN_BLOCK, _UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")


# ---------------------------------------------------------------------------- architecture


def architecture_from_diffusers(cfg: Mapping[str, Any], where: str) -> ae.AutoencoderConfig:
  """AutoencoderConfig from a diffusers AutoencoderKL config.json dict; errors name `where`."""
  cls = cfg.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise ConversionError(f"{where}: _class_name is {cls!r}; only AutoencoderKL converts")
  channels = cfg.get("block_out_channels", (64,))
  if not isinstance(channels, (list, tuple)) or not channels:
    raise ConversionError(f"{where}: block_out_channels must be a non-empty list, got "
                          f"{channels!r}")
  for key, want in (("down_block_types", _DOWN_BLOCK), ("up_block_types", _UP_BLOCK)):
    types = list(cfg.get(key, [want]))
    if len(types) != len(channels) or any(t != want for t in types):
      raise ConversionError(f"{where}: {key} must be {len(channels)} x {want!r} (one per "
                            f"block_out_channels entry), got {types!r}")
  if cfg.get("act_fn", "silu") != "silu":
    raise ConversionError(f"{where}: act_fn {cfg['act_fn']!r} is not supported (only 'silu')")
  for key in ("latents_mean", "latents_std"):
    if cfg.get(key) is not None:
      raise ConversionError(f"{where}: {key} (per-channel latent statistics) is not supported; "
                            f"only scaling_factor and shift_factor are")
  shift = cfg.get("shift_factor")
  try:
    return ae.AutoencoderConfig(
        in_channels=cfg.get("in_channels", 3),
        out_channels=cfg.get("out_channels", 3),
        latent_channels=cfg.get("latent_channels", 4),
        block_out_channels=tuple(channels),
        layers_per_block=cfg.get("layers_per_block", 1),
        norm_num_groups=cfg.get("norm_num_groups", 32),
        mid_block_attention=bool(cfg.get("mid_block_add_attention", True)),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        scaling_factor=float(cfg.get("scaling_factor", 0.18215)),
        shift_factor=0.0 if shift is None else float(shift))
  except (ValueError, TypeError) as e:
    raise ConversionError(f"{where}: {e}".replace("autoencoder.", "")) from e


# ---------------------------------------------------------------------------- names and layouts


def torch_name(flax_path: str) -> str:
  """'encoder/down_blocks_0/resnets_1/norm1/scale' -> 'encoder.down_blocks.0.resnets.1.norm1.weight'."""
  *modules, leaf = flax_path.split("/")
  modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
  return ".".join(modules + ["weight" if leaf in ("kernel", "scale") else leaf])


def canonical_names(state: Mapping[str, np.ndarray]) -> dict[str, str]:
  """{current diffusers name: name in the file}, renaming the deprecated attention names."""
  names = {}
  for name in state:
    match = _OLD_ATTENTION.match(name)
    new = (f"{match[1]}{_OLD_ATTENTION_NAMES[match[2]]}.{match[3]}" if match else name)
    names[new] = name
  return names


def convert_state_dict(state: Mapping[str, np.ndarray], arch: ae.AutoencoderConfig,
                       where: str) -> dict[str, Any]:
  """PyTorch AutoencoderKL state dict (numpy) -> the Flax 'params' tree for `arch`."""
  shapes = params_file.flatten(ae.param_shapes(ae.build(arch)))
  names = canonical_names(state)
  expected = {torch_name(path): path for path in shapes}
  missing = sorted(set(expected) - set(names))
  extra = sorted(names[n] for n in set(names) - set(expected))
  converted, reshaped = {}, []
  for name in sorted(set(expected) & set(names)):
    path = expected[name]
    want = tuple(shapes[path].shape)
    value = diffusers_folder.to_flax_layout(state[names[name]], path.rsplit("/", 1)[-1], want)
    if value.shape != want:
      reshaped.append(f"{names[name]} {list(np.shape(state[names[name]]))} -> {path} "
                      f"needs {list(want)}")
    converted[path] = value
  error = diffusers_folder.key_mismatch_error(
      f"{where} does not match the AutoencoderKL its config.json describes "
      f"(block_out_channels={list(arch.block_out_channels)}, layers_per_block="
      f"{arch.layers_per_block}, latent_channels={arch.latent_channels}):",
      missing, extra, reshaped)
  if error:
    raise error
  return params_file.unflatten(converted)


def convert(folder: str) -> tuple[dict[str, Any], ae.AutoencoderConfig]:
  """(params, architecture) of the diffusers AutoencoderKL in `folder`."""
  folder = diffusers_folder.resolve_folder(folder, "vae", "AutoencoderKL")
  config_path = files.join(folder, CONFIG)
  cfg = files.read_json_object(config_path, ConversionError)
  arch = architecture_from_diffusers(cfg, config_path)
  state = diffusers_folder.read_weights(folder)
  params = convert_state_dict(state, arch, files.join(folder, WEIGHTS))
  return params, arch
