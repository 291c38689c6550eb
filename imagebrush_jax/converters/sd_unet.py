"""diffusers UNet2DConditionModel folder (Stable Diffusion 1.x / 2.x) -> this project's UNet.

Input: a diffusers UNet folder (`config.json` + `diffusion_pytorch_model.safetensors`, or its
sharded index), or a pipeline folder with a `unet/` sub-folder. The architecture follows
config.json: CrossAttnDownBlock2D / DownBlock2D levels mirrored by CrossAttnUpBlock2D /
UpBlock2D ones and a UNetMidBlock2DCrossAttn, `layers_per_block`, `norm_num_groups`,
`cross_attention_dim`, `transformer_layers_per_block`, and the heads of `attention_head_dim` /
`num_attention_heads` (a number for every level, SD 1.x, or a list, SD 2.x), with 1x1-conv
(SD 1.x) or linear (SD 2.x, `use_linear_projection`) transformer projections. It becomes
models/unet.UNet in SD's layout: attention 'self+cross' on the cross-attention levels and in the
middle, 'none' elsewhere. Every tensor maps to one parameter, except the attention projections:
self-attention's to_q / to_k / to_v become one fused `qkv` kernel [in, 3, heads, head_dim],
cross-attention's to_k / to_v one `kv` kernel, to_out.0 an `out` kernel [heads, head_dim, out].
Config options this UNet does not compute (class or added embeddings, other block types, ...)
are refused, naming the key; missing, unexpected or mis-shaped tensors are one error that lists
them all.

Fine-tuning from it (`config.model.unet_init`, see `params_for_config`) widens the input
convolution for ImageBrush's extra input channels (the known grid and the mask), zero-initialised.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.converters import diffusers_folder
from imagebrush_jax.converters import params_file
from imagebrush_jax.converters.diffusers_folder import CONFIG, WEIGHTS, ConversionError
from imagebrush_jax.models import unet as unet_lib

__all__ = ["CONFIG", "WEIGHTS", "ConversionError", "KIND", "architecture_from_diffusers",
           "build", "convert", "convert_state_dict", "load", "params_for_config", "save"]

KIND = "unet"
_CROSS_DOWN, _PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
_CROSS_UP, _PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
_MID = "UNetMidBlock2DCrossAttn"
# config.json keys whose value must be this (diffusers' default; null reads as the default too).
_FIXED = {
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "only_cross_attention": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "act_fn": "silu", "norm_eps": 1e-5, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "dual_cross_attention": False, "class_embed_type": None, "addition_embed_type": None,
    "num_class_embeds": None, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None,
    "cross_attention_norm": None, "reverse_transformer_layers_per_block": None,
}
# The UNet's own keys in an architecture dict; the rest: in_channels, cross_attention_dim.
UNET_KEYS = ("channels", "attention", "mid_attention", "num_res_blocks", "num_heads", "head_dim",
             "transformer_depth", "norm_groups")


# ---------------------------------------------------------------------------- architecture


def _per_level(value: Any, key: str, levels: int, where: str) -> list:
  """A config value given once for all levels or as a list of one per level -> the list."""
  if isinstance(value, (list, tuple)):
    if len(value) != levels:
      raise ConversionError(f"{where}: {key} has {len(value)} entries for {levels} levels")
    return list(value)
  return [value] * levels


def _single(value: Any, key: str, levels: int, where: str, what: str) -> int:
  """A per-level config value that this UNet holds once: all levels must agree."""
  values = set(_per_level(value, key, levels, where))
  if len(values) != 1:
    raise ConversionError(f"{where}: {key} = {value!r} differs between levels; this UNet has "
                          f"one {what} for all levels")
  return int(values.pop())


def heads_per_level(channels: Sequence[int], num_heads: int, head_dim: int) -> list[int]:
  """Attention heads of each level, as UNet(num_heads=..., head_dim=...) computes them."""
  return [c // head_dim if head_dim > 0 else num_heads for c in channels]


def architecture_from_diffusers(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
  """The UNet's architecture dict (UNET_KEYS, in_channels, out_channels, cross_attention_dim)
  from a diffusers UNet2DConditionModel config.json dict; errors name `where` and the key."""
  cls = cfg.get("_class_name", "UNet2DConditionModel")
  if cls != "UNet2DConditionModel":
    raise ConversionError(f"{where}: _class_name is {cls!r}; only UNet2DConditionModel converts")
  for key, want in _FIXED.items():
    if cfg.get(key) is not None and cfg[key] != want:
      raise ConversionError(f"{where}: {key} = {cfg[key]!r} is not supported (only {want!r}, "
                            f"Stable Diffusion's)")
  get = lambda key, default: diffusers_folder.config_value(cfg, key, default)
  channels = [int(c) for c in get("block_out_channels", (320, 640, 1280, 1280))]
  levels = len(channels)
  down = list(get("down_block_types", (_CROSS_DOWN,) * 3 + (_PLAIN_DOWN,)))
  up = list(get("up_block_types", (_PLAIN_UP,) + (_CROSS_UP,) * 3))
  if len(down) != levels or len(up) != levels:
    raise ConversionError(f"{where}: down_block_types / up_block_types need one entry per "
                          f"block_out_channels entry ({levels}), got {down!r} / {up!r}")
  attention = []
  for lvl, (d, u) in enumerate(zip(down, reversed(up))):
    if d not in (_CROSS_DOWN, _PLAIN_DOWN):
      raise ConversionError(f"{where}: down_block_types[{lvl}] = {d!r} is not supported (only "
                            f"{_CROSS_DOWN!r}, {_PLAIN_DOWN!r})")
    want_up = _CROSS_UP if d == _CROSS_DOWN else _PLAIN_UP
    if u != want_up:
      raise ConversionError(f"{where}: up_block_types[{levels - 1 - lvl}] = {u!r} does not "
                            f"mirror down_block_types[{lvl}] = {d!r} (expected {want_up!r})")
    attention.append("self+cross" if d == _CROSS_DOWN else "none")
  if get("mid_block_type", _MID) != _MID:
    raise ConversionError(f"{where}: mid_block_type = {cfg['mid_block_type']!r} is not supported "
                          f"(only {_MID!r})")
  cross_dim = _single(get("cross_attention_dim", 1280), "cross_attention_dim", levels, where,
                      "cross-attention width")
  # diffusers reads attention_head_dim as the number of heads unless num_attention_heads is set.
  heads_key = ("num_attention_heads" if cfg.get("num_attention_heads") is not None
               else "attention_head_dim")
  heads_value = get(heads_key, 8)
  heads = [int(h) for h in _per_level(heads_value, heads_key, levels, where)]
  for c, h in zip(channels, heads):
    if h < 1 or c % h:
      raise ConversionError(f"{where}: {heads_key} = {heads_value!r}: {c} channels do not "
                            f"split into {h} heads")
  if len(set(heads)) == 1:
    num_heads, head_dim = heads[0], 0
  elif len({c // h for c, h in zip(channels, heads)}) == 1:
    num_heads, head_dim = heads[0], channels[0] // heads[0]
  else:
    raise ConversionError(f"{where}: {heads_key} = {heads_value!r} gives neither the same "
                          f"heads nor the same head width on every level")
  return dict(
      channels=channels, attention=attention, mid_attention="self+cross",
      num_res_blocks=_single(get("layers_per_block", 2), "layers_per_block", levels, where,
                             "ResBlock count"),
      num_heads=num_heads, head_dim=head_dim,
      transformer_depth=_single(get("transformer_layers_per_block", 1),
                                "transformer_layers_per_block", levels, where,
                                "transformer depth"),
      norm_groups=int(get("norm_num_groups", 32)), in_channels=int(get("in_channels", 4)),
      out_channels=int(get("out_channels", 4)), cross_attention_dim=cross_dim)


def build(arch: Mapping[str, Any], **kwargs) -> unet_lib.UNet:
  """The UNet of an architecture dict (kwargs: e.g. runtime)."""
  return unet_lib.UNet(out_channels=arch["out_channels"], **{k: arch[k] for k in UNET_KEYS},
                       **kwargs)


def param_shapes(arch: Mapping[str, Any], in_channels: int | None = None) -> dict[str, Any]:
  """The UNet's 'params' as ShapeDtypeStructs (input channels: the file's unless given)."""
  x = jnp.zeros((1, 8, 8, in_channels or arch["in_channels"]), jnp.float32)
  context = jnp.zeros((1, 1, arch["cross_attention_dim"]), jnp.float32)
  return jax.eval_shape(lambda: build(arch).init(jax.random.key(0), x, jnp.zeros((1,), jnp.int32),
                                                 context))["params"]


# ---------------------------------------------------------------------------- names


_RES = {"norm1": "norm1", "conv1": "conv1", "temb": "time_emb_proj", "norm2": "norm2",
        "conv2": "conv2", "skip": "conv_shortcut"}
_BLOCK = {"norm_self": "norm1", "attn_self": "attn1", "norm_cross": "norm2", "attn_cross": "attn2",
          "norm_ff": "norm3", "wi": "net.0.proj", "wo": "net.2"}  # ff/wi: GEGLU's projection
_TOP = {"conv_in": "conv_in", "temb1": "time_embedding.linear_1",
        "temb2": "time_embedding.linear_2", "norm_out": "conv_norm_out", "conv_out": "conv_out",
        "mid_attn": "mid_block.attentions.0"}


def _module_name(modules: list[str], levels: int) -> str:
  """Our module path (without the leaf) -> diffusers' module path."""
  top, rest = modules[0], modules[1:]
  if top in _TOP:
    name = _TOP[top]
  elif m := re.fullmatch(r"mid_res(\d)", top):
    name = f"mid_block.resnets.{m[1]}"
  elif m := re.fullmatch(r"(down|up)(\d+)_(res|attn)(\d+)", top):
    block = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
    name = f"{m[1]}_blocks.{block}.{'resnets' if m[3] == 'res' else 'attentions'}.{m[4]}"
  elif m := re.fullmatch(r"(down|up)(\d+)_(downsample|upsample)", top):
    block = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
    name = f"{m[1]}_blocks.{block}.{m[3]}rs.0"
  else:
    raise KeyError(top)
  parts = [name]
  for part in rest:
    if m := re.fullmatch(r"block(\d+)", part):
      parts.append(f"transformer_blocks.{m[1]}")
    elif "_res" in top and part in _RES:
      parts.append(_RES[part])
    else:
      parts.append(_BLOCK.get(part, part))
  return ".".join(parts)


def _sources(path: str, levels: int) -> tuple[list[str], str]:
  """(diffusers tensor names, how they combine) for one of our parameter paths.

  How: 'plain' (one tensor, layout change only), 'qkv' / 'kv' (stacked projections), 'q',
  'out' (an attention output kernel).
  """
  *modules, leaf = path.split("/")
  if modules[-1] in ("qkv", "q", "kv", "out") and len(modules) >= 2 and \
      modules[-2] in ("attn_self", "attn_cross"):
    attn = _module_name(modules[:-1], levels)
    kind = modules[-1]
    if kind == "qkv":
      return [f"{attn}.to_{p}.weight" for p in "qkv"], "qkv"
    if kind == "kv":
      return [f"{attn}.to_{p}.weight" for p in "kv"], "kv"
    if kind == "q":
      return [f"{attn}.to_q.weight"], "q"
    return [f"{attn}.to_out.0.{'weight' if leaf == 'kernel' else 'bias'}"], \
        "out" if leaf == "kernel" else "plain"
  module = _module_name(modules, levels)
  return [f"{module}.{'weight' if leaf in ('kernel', 'scale') else 'bias'}"], "plain"


def _combine(values: list[np.ndarray], how: str, leaf: str, want: tuple[int, ...]) -> np.ndarray:
  """The diffusers tensors of one parameter in its layout (shape checked by the caller)."""
  if how == "plain":
    return diffusers_folder.to_flax_layout(values[0], leaf, want)
  linear = [np.asarray(v, np.float32).T for v in values]  # [out, in] -> [in, out]
  if how == "out":  # [in = heads * head_dim, out] -> [heads, head_dim, out]
    (kernel,) = linear
    return kernel.reshape(want) if kernel.size == np.prod(want) else kernel
  heads = want[-2:]
  split = [k.reshape(k.shape[0], *heads) if k.shape[1] == np.prod(heads) else k for k in linear]
  if how == "q":
    return split[0]
  if len({k.shape for k in split}) != 1:
    return np.empty((0,), np.float32)  # reported as a shape mismatch by the caller
  return np.stack(split, axis=1)  # [in, 3 | 2, heads, head_dim]


def convert_state_dict(state: Mapping[str, np.ndarray], arch: Mapping[str, Any],
                       where: str) -> dict[str, Any]:
  """PyTorch UNet2DConditionModel state dict (numpy) -> the Flax 'params' tree for `arch`."""
  shapes = params_file.flatten(param_shapes(arch))
  levels = len(arch["channels"])
  used, missing, reshaped, converted = set(), [], [], {}
  for path in sorted(shapes):
    names, how = _sources(path, levels)
    absent = [n for n in names if n not in state]
    missing.extend(absent)
    used.update(names)
    if absent:
      continue
    want = tuple(shapes[path].shape)
    value = _combine([state[n] for n in names], how, path.rsplit("/", 1)[-1], want)
    if value.shape != want:
      got = " + ".join(f"{n} {list(np.shape(state[n]))}" for n in names)
      reshaped.append(f"{got} -> {path} needs {list(want)}")
    converted[path] = value
  extra = sorted(set(state) - used)
  error = diffusers_folder.key_mismatch_error(
      f"{where} does not match the UNet2DConditionModel its config.json describes "
      f"(block_out_channels={arch['channels']}, layers_per_block={arch['num_res_blocks']}, "
      f"cross_attention_dim={arch['cross_attention_dim']}):", missing, extra, reshaped)
  if error:
    raise error
  return params_file.unflatten(converted)


# ---------------------------------------------------------------------------- files


def convert(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, architecture) of the diffusers UNet2DConditionModel in `folder`."""
  folder = diffusers_folder.resolve_folder(folder, "unet", "UNet2DConditionModel")
  config_path = files.join(folder, CONFIG)
  arch = architecture_from_diffusers(files.read_json_object(config_path, ConversionError),
                                     config_path)
  state = diffusers_folder.read_weights(folder)
  return convert_state_dict(state, arch, files.join(folder, WEIGHTS)), arch


def save(path: str, params: Mapping[str, Any], arch: Mapping[str, Any], source: str) -> None:
  """Writes a converted UNet file (kind 'unet'; the architecture dict in its header)."""
  params_file.save(path, params, kind=KIND, architecture=arch, source=source)


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, architecture) of a converted UNet file; checks the tensors against the header."""
  params, arch, _ = params_file.load(path, KIND)
  try:
    expected = param_shapes(arch)
  except (KeyError, TypeError, ValueError) as e:
    raise params_file.ParamsFileError(f"{path}: unreadable UNet architecture {arch!r}: {e}") from e
  params_file.check_tree(params, expected, path)
  return params, arch


# ---------------------------------------------------------------------------- fine-tuning


def _config_mismatches(config: Any, arch: Mapping[str, Any]) -> list[str]:
  """One line per config.model key whose value differs from the converted UNet's."""
  unet = config.model.unet
  ours = dict(channels=[int(c) for c in unet.channels], attention=list(unet.attention),
              mid_attention=unet.mid_attention, num_res_blocks=int(unet.num_res_blocks),
              heads=heads_per_level(unet.channels, int(unet.num_heads), int(unet.head_dim)),
              transformer_depth=int(unet.transformer_depth), norm_groups=int(unet.norm_groups))
  theirs = dict(arch, heads=heads_per_level(arch["channels"], arch["num_heads"],
                                            arch["head_dim"]))
  names = {"heads": "num_heads / head_dim (heads per level)"}
  lines = [f"config.model.unet.{names.get(k, k)} = {ours[k]}, the file's UNet has {theirs[k]}"
           for k in ours if ours[k] != theirs[k]]
  for file_key in ("in_channels", "out_channels"):
    if int(config.model.in_channels) != arch[file_key]:
      lines.append(f"config.model.in_channels = {config.model.in_channels} (latent channels), "
                   f"the file's UNet has {file_key} = {arch[file_key]}")
  return lines


def params_for_config(path: str, config: Any, conv_in_channels: int) -> dict[str, Any]:
  """A converted UNet file's params for config.model.unet, its input convolution widened to
  `conv_in_channels` (the noisy latent first, then ImageBrush's extra inputs, all zero).

  The file must describe the UNet the config builds (every mismatching key is listed), and the
  prompt tokens (config.model.prompt.mixer.width) must be as wide as its cross-attention.
  """
  params, arch = load(path)
  problems = _config_mismatches(config, arch)
  width = int(config.model.prompt.mixer.width)
  if width != arch["cross_attention_dim"] and any(
      "cross" in kind for kind in (*arch["attention"], arch["mid_attention"])):
    problems.append(
        f"config.model.prompt.mixer.width = {width}: the prompt tokens must be as wide as the "
        f"UNet's cross-attention context, {arch['cross_attention_dim']} (SD 1.x: 768, SD 2.x: "
        f"1024); the prompt encoder projects its ViT's width to it")
  if problems:
    raise ValueError(f"config.model.unet_init = {path} does not fit the config:\n  " +
                     "\n  ".join(problems))
  kernel = np.asarray(params["conv_in"]["kernel"])
  if conv_in_channels < kernel.shape[2]:
    raise ValueError(f"config.model.unet_init = {path}: the UNet reads {conv_in_channels} input "
                     f"channels, fewer than the file's {kernel.shape[2]}")
  wide = np.zeros((*kernel.shape[:2], conv_in_channels, kernel.shape[3]), np.float32)
  wide[:, :, :kernel.shape[2]] = kernel
  return {**params, "conv_in": {**params["conv_in"], "kernel": wide}}


# ---------------------------------------------------------------------------- verification

VERIFY_TOLERANCE = 1e-4


def verify(folder: str, params: Mapping[str, Any], arch: Mapping[str, Any], *, batch: int = 2,
           tokens: int = 77, seed: int = 0) -> dict[str, Any]:
  """Runs diffusers' PyTorch UNet2DConditionModel from `folder` and this UNet with `params` on
  the same random latents, timesteps and context, in float32; returns the comparison.

  Needs torch and diffusers (the test requirements). The latents are 4 cells per side at the
  innermost level (32 x 32 for SD's four levels).
  """
  try:
    import diffusers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(f"--verify needs torch and diffusers (pip install -r "
                          f"requirements-test.txt): {e}") from e
  folder = diffusers_folder.resolve_folder(folder, "unet", "UNet2DConditionModel")
  if files.is_remote(folder):
    raise ConversionError(f"--verify reads the diffusers folder with diffusers itself, which "
                          f"needs a local folder, not {folder}")
  reference = diffusers.UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32,
                                                            low_cpu_mem_usage=False)
  reference.eval()
  size = 4 * 2 ** (len(arch["channels"]) - 1)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, size, size, arch["in_channels"])).astype(np.float32)
  t = rng.integers(0, 1000, (batch,))
  context = rng.standard_normal((batch, tokens, arch["cross_attention_dim"])).astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                     encoder_hidden_states=torch.from_numpy(context)).sample
  want = want.numpy().transpose(0, 2, 3, 1)
  with jax.default_matmul_precision("highest"):
    got = np.asarray(jax.jit(build(arch).apply)(
        {"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(x), jnp.asarray(t),
        jnp.asarray(context)))
  diff = float(np.abs(got - want).max())
  return dict(max_abs_diff=diff, reference_max_abs=float(np.abs(want).max()),
              tolerance=VERIFY_TOLERANCE, ok=diff <= VERIFY_TOLERANCE,
              input_shape=list(x.shape), context_shape=list(context.shape))
