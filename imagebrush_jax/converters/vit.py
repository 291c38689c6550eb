"""timm / Hugging Face ViT weights -> the prompt encoder's ViT backbone (models/prompt_encoder.ViT).

Input: one safetensors file. Three namings are recognised, under any prefix (`vit.`,
`vision_model.`, ...; other parts of the file, e.g. a CLIP text tower, are left out):

  timm      VisionTransformer: patch_embed.proj, pos_embed, [cls_token], blocks.N.{norm1,
            attn.qkv (or attn.q_bias / attn.v_bias), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm
  hf_vit    transformers ViTModel: embeddings.{cls_token, position_embeddings,
            patch_embeddings.projection}, encoder.layer.N.{layernorm_before,
            attention.attention.{query,key,value}, attention.output.dense, layernorm_after,
            intermediate.dense, output.dense}, layernorm
  hf_clip   transformers SiglipVisionModel / CLIPVisionModel: embeddings.{patch_embedding,
            position_embedding, [class_embedding]}, [pre_layrnorm], encoder.layers.N.{layer_norm1,
            self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}, post_layernorm

The target is a plain pre-norm ViT without class token, q/k/v biases or pre-norm, with exact GELU
and LayerNorm eps 1e-6; it returns every patch token after the final LayerNorm. What converts
exactly: key biases are dropped (softmax ignores a shift shared by all keys), value biases are
folded into the output projection's bias (attention weights sum to one), a missing patch-embedding
bias becomes zeros. What cannot be represented (a class token with its position, a pre-norm, a
non-zero query bias, a tanh / quick GELU from config.json) is an error listing it, unless
`lossy=True`, which drops it and reports what was dropped (the backbone then starts close to, not
equal to, the original, e.g. as an initialisation to fine-tune). Classification / pooling heads
are not part of the backbone and are skipped. Missing keys, unexpected keys and shape mismatches
are one error that lists them all.

Attention heads cannot be read off the weights: they come from `num_heads`, else from a
config.json next to the file (num_attention_heads, num_heads, vision_config.*, model_args.*).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from imagebrush_jax.infra import files
from imagebrush_jax.converters import params_file
from imagebrush_jax.models import prompt_encoder as pe

KIND = "vit"
TARGET_LAYER_NORM_EPS = 1e-6
EXACT_GELU = ("gelu",)  # transformers' name of the exact (erf) GELU, the one the target uses

# Suffix of the patch-embedding weight in each naming; the text before it is the prefix.
_PATCH_WEIGHT = {
    "timm": "patch_embed.proj.weight",
    "hf_vit": "embeddings.patch_embeddings.projection.weight",
    "hf_clip": "embeddings.patch_embedding.weight",
}
# Parts of a checkpoint that belong to heads, not to the backbone (relative to the prefix).
_HEADS = re.compile(r"^(head\.|head_drop\.|fc_norm\.|attn_pool\.|pooler\.|classifier\.|"
                    r"embeddings\.position_ids$)")


class ConversionError(ValueError):
  """The file does not convert; the message names the file and lists the offending keys."""


# ---------------------------------------------------------------------------- canonical form


@dataclasses.dataclass
class _Block:
  """One transformer block in PyTorch layout: linear weights [out, in]."""
  norm1: tuple[np.ndarray, np.ndarray]
  q: np.ndarray
  k: np.ndarray
  v: np.ndarray
  q_bias: np.ndarray | None
  k_bias: np.ndarray | None
  v_bias: np.ndarray | None
  proj: tuple[np.ndarray, np.ndarray]
  norm2: tuple[np.ndarray, np.ndarray]
  fc1: tuple[np.ndarray, np.ndarray]
  fc2: tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class _Backbone:
  patch_weight: np.ndarray  # [D, 3, p, p]
  patch_bias: np.ndarray | None
  pos: np.ndarray  # [T, D], T = patches (+ 1 with a class token)
  cls: np.ndarray | None  # [D]
  pre_norm: tuple[np.ndarray, np.ndarray] | None
  blocks: list[_Block]
  norm: tuple[np.ndarray, np.ndarray]


class _Reader:
  """Takes tensors out of a state dict by name under a prefix, collecting what is missing."""

  def __init__(self, state: Mapping[str, np.ndarray], prefix: str):
    self.state, self.prefix = state, prefix
    self.used: set[str] = set()
    self.missing: list[str] = []

  def has(self, name: str) -> bool:
    return self.prefix + name in self.state

  def get(self, name: str, optional: bool = False) -> np.ndarray | None:
    key = self.prefix + name
    if key not in self.state:
      if not optional:
        self.missing.append(key)
      return None
    self.used.add(key)
    return np.asarray(self.state[key], np.float32)

  def pair(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    return self.get(f"{name}.weight"), self.get(f"{name}.bias")

  def indices(self, pattern: str) -> list[int]:
    regex = re.compile(re.escape(self.prefix) + pattern)
    return sorted({int(m[1]) for m in map(regex.match, self.state) if m})


def _parse_timm(r: _Reader) -> _Backbone:
  blocks = []
  for i in r.indices(r"blocks\.(\d+)\."):
    b = f"blocks.{i}."
    qkv = r.get(b + "attn.qkv.weight")
    q, k, v = np.split(qkv, 3, axis=0) if qkv is not None else (None,) * 3
    qkv_bias = r.get(b + "attn.qkv.bias", optional=True)
    if qkv_bias is not None:
      q_bias, k_bias, v_bias = np.split(qkv_bias, 3)
    else:  # BEiT / EVA style: separate q and v biases, no k bias
      q_bias, k_bias = r.get(b + "attn.q_bias", optional=True), None
      v_bias = r.get(b + "attn.v_bias", optional=True)
    blocks.append(_Block(r.pair(b + "norm1"), q, k, v, q_bias, k_bias, v_bias,
                         r.pair(b + "attn.proj"), r.pair(b + "norm2"), r.pair(b + "mlp.fc1"),
                         r.pair(b + "mlp.fc2")))
  pos = r.get("pos_embed")
  cls = r.get("cls_token", optional=True)
  return _Backbone(
      r.get("patch_embed.proj.weight"), r.get("patch_embed.proj.bias", optional=True),
      None if pos is None else pos.reshape(-1, pos.shape[-1]),
      None if cls is None else cls.reshape(-1),
      r.pair("norm_pre") if r.has("norm_pre.weight") else None, blocks, r.pair("norm"))


def _parse_hf_vit(r: _Reader) -> _Backbone:
  blocks = []
  for i in r.indices(r"encoder\.layer\.(\d+)\."):
    b = f"encoder.layer.{i}."
    a = b + "attention.attention."
    blocks.append(_Block(
        r.pair(b + "layernorm_before"), r.get(a + "query.weight"), r.get(a + "key.weight"),
        r.get(a + "value.weight"), r.get(a + "query.bias", optional=True),
        r.get(a + "key.bias", optional=True), r.get(a + "value.bias", optional=True),
        r.pair(b + "attention.output.dense"), r.pair(b + "layernorm_after"),
        r.pair(b + "intermediate.dense"), r.pair(b + "output.dense")))
  pos = r.get("embeddings.position_embeddings")
  cls = r.get("embeddings.cls_token", optional=True)
  return _Backbone(
      r.get("embeddings.patch_embeddings.projection.weight"),
      r.get("embeddings.patch_embeddings.projection.bias", optional=True),
      None if pos is None else pos.reshape(-1, pos.shape[-1]),
      None if cls is None else cls.reshape(-1), None, blocks, r.pair("layernorm"))


def _parse_hf_clip(r: _Reader) -> _Backbone:
  blocks = []
  for i in r.indices(r"encoder\.layers\.(\d+)\."):
    b = f"encoder.layers.{i}."
    a = b + "self_attn."
    blocks.append(_Block(
        r.pair(b + "layer_norm1"), r.get(a + "q_proj.weight"), r.get(a + "k_proj.weight"),
        r.get(a + "v_proj.weight"), r.get(a + "q_proj.bias", optional=True),
        r.get(a + "k_proj.bias", optional=True), r.get(a + "v_proj.bias", optional=True),
        r.pair(a + "out_proj"), r.pair(b + "layer_norm2"), r.pair(b + "mlp.fc1"),
        r.pair(b + "mlp.fc2")))
  return _Backbone(
      r.get("embeddings.patch_embedding.weight"),
      r.get("embeddings.patch_embedding.bias", optional=True),
      r.get("embeddings.position_embedding.weight"),
      r.get("embeddings.class_embedding", optional=True),
      r.pair("pre_layrnorm") if r.has("pre_layrnorm.weight") else None, blocks,
      r.pair("post_layernorm"))


_PARSERS = {"timm": _parse_timm, "hf_vit": _parse_hf_vit, "hf_clip": _parse_hf_clip}


def detect_naming(state: Mapping[str, np.ndarray], where: str) -> tuple[str, str]:
  """(naming, prefix) from the one patch-embedding weight in the file."""
  found = [(naming, key[:-len(suffix)]) for key in state
           for naming, suffix in _PATCH_WEIGHT.items()
           if key.endswith(suffix) and (len(key) == len(suffix) or key[-len(suffix) - 1] == ".")]
  if len(found) != 1:
    what = (", ".join(f"{n} under {p!r}" for n, p in found) if found
            else "no patch-embedding weight")
    raise ConversionError(
        f"{where}: cannot tell which ViT this is ({what}); expected exactly one of "
        f"{', '.join(f'{n}: *{s}' for n, s in _PATCH_WEIGHT.items())}")
  return found[0]


# ---------------------------------------------------------------------------- conversion


@dataclasses.dataclass
class Options:
  """What the file cannot say, and how strict to be."""
  num_heads: int
  hidden_act: str = "gelu"
  layer_norm_eps: float = TARGET_LAYER_NORM_EPS
  lossy: bool = False


@dataclasses.dataclass
class Result:
  params: dict[str, Any]
  architecture: dict[str, Any]
  notes: list[str]  # exact rewrites, skipped heads, and (lossy) what was dropped


def _is_zero(x: np.ndarray | None) -> bool:
  return x is None or not np.any(x)


def _architecture(bb: _Backbone, num_heads: int, num_tokens: int, where: str) -> dict[str, Any]:
  width, _, p, p2 = bb.patch_weight.shape
  side = math.isqrt(num_tokens)
  problems = []
  if p != p2:
    problems.append(f"the patch embedding is {p}x{p2}, not square")
  if side * side != num_tokens:
    problems.append(f"{num_tokens} position embeddings are not a square grid of patches")
  if width % num_heads:
    problems.append(f"width {width} is not divisible by {num_heads} heads")
  hidden = bb.blocks[0].fc1[0].shape[0] if bb.blocks and bb.blocks[0].fc1[0] is not None else 0
  if hidden % width:
    problems.append(f"MLP width {hidden} is not a multiple of the width {width} (the target's "
                    f"mlp_ratio is an integer)")
  if problems:
    raise ConversionError(f"{where}: " + "; ".join(problems))
  return dict(patch_size=int(p), width=int(width), depth=len(bb.blocks), num_heads=int(num_heads),
              mlp_ratio=hidden // width, image_size=int(side * p), num_patches=int(num_tokens))


def vit_module(arch: Mapping[str, Any]) -> pe.ViT:
  return pe.ViT(patch_size=arch["patch_size"], width=arch["width"], depth=arch["depth"],
                num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"])


def vit_param_shapes(arch: Mapping[str, Any]) -> Any:
  size = arch["image_size"]
  x = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: vit_module(arch).init(jax.random.key(0), x))["params"]


def convert_state_dict(state: Mapping[str, np.ndarray], options: Options, where: str) -> Result:
  """A ViT state dict (numpy, PyTorch layout) -> Result with the target's 'params' tree."""
  naming, prefix = detect_naming(state, where)
  reader = _Reader(state, prefix)
  bb = _PARSERS[naming](reader)
  own = {k for k in state if k.startswith(prefix)}
  heads = sorted(k for k in own - reader.used if _HEADS.match(k[len(prefix):]))
  unexpected = sorted(own - reader.used - set(heads))
  if reader.missing or unexpected or not bb.blocks:
    lines = [f"{where}: not a complete {naming} ViT backbone (prefix {prefix!r}):"]
    if not bb.blocks:
      lines.append("  no transformer blocks found")
    for title, keys in ((f"{len(reader.missing)} missing key(s)", reader.missing),
                        (f"{len(unexpected)} unexpected key(s) (not representable in the target "
                         f"ViT)", unexpected)):
      if keys:
        lines.append(f"  {title}:")
        lines.extend(f"    {k}" for k in keys[:30])
        if len(keys) > 30:
          lines.append(f"    ... and {len(keys) - 30} more")
    raise ConversionError("\n".join(lines))

  notes = [f"naming {naming}, prefix {prefix!r}, {len(bb.blocks)} blocks"]
  if heads:
    notes.append(f"skipped {len(heads)} head / pooler tensor(s) (not part of the backbone): "
                 f"{', '.join(heads[:6])}{' ...' if len(heads) > 6 else ''}")
  others = len(state) - len(own)
  if others:
    notes.append(f"left out {others} tensor(s) outside the prefix {prefix!r}")

  # Everything the target cannot hold, each either an error or (lossy) a note.
  lossy = []
  pos = bb.pos
  if bb.cls is not None:
    lossy.append("class token (and its position embedding)")
    side = math.isqrt(pos.shape[0] - 1) if pos is not None and pos.shape[0] > 1 else 0
    if pos is not None and side * side == pos.shape[0] - 1:
      pos = pos[1:]
  if bb.pre_norm is not None:
    lossy.append("pre-norm LayerNorm before the first block")
  nonzero_q = [i for i, b in enumerate(bb.blocks) if not _is_zero(b.q_bias)]
  if nonzero_q:
    lossy.append(f"non-zero query biases (blocks {nonzero_q[:8]}{' ...' if len(nonzero_q) > 8 else ''})")
  if options.hidden_act not in EXACT_GELU:
    lossy.append(f"activation {options.hidden_act!r} (the target uses the exact GELU)")
  if lossy and not options.lossy:
    raise ConversionError(
        f"{where}: the target ViT cannot represent: {'; '.join(lossy)}. Pass --lossy to drop "
        f"them (the converted backbone is then an approximation, e.g. to fine-tune)")
  notes.extend(f"DROPPED (lossy): {item}" for item in lossy)
  if options.layer_norm_eps != TARGET_LAYER_NORM_EPS:
    notes.append(f"LayerNorm eps {options.layer_norm_eps:g} becomes {TARGET_LAYER_NORM_EPS:g} "
                 f"(a negligible change)")
  if any(not _is_zero(b.k_bias) for b in bb.blocks):
    notes.append("key biases dropped (exact: softmax is invariant to them)")
  if any(not _is_zero(b.v_bias) for b in bb.blocks):
    notes.append("value biases folded into the output projection bias (exact)")

  arch = _architecture(bb, options.num_heads, pos.shape[0], where)
  d, n = arch["width"], arch["num_heads"]
  h = d // n
  params: dict[str, Any] = {
      "patch_embed": {"kernel": bb.patch_weight.transpose(2, 3, 1, 0),
                      "bias": (np.zeros((d,), np.float32) if bb.patch_bias is None
                               else bb.patch_bias)},
      "pos_embed": pos,
      "encoder": {"norm": {"scale": bb.norm[0], "bias": bb.norm[1]}},
  }
  for i, b in enumerate(bb.blocks):
    out_bias = b.proj[1] + (0.0 if b.v_bias is None else b.proj[0] @ b.v_bias)
    params["encoder"][f"block{i}"] = {
        "norm1": {"scale": b.norm1[0], "bias": b.norm1[1]},
        "attn": {
            "qkv": {"kernel": np.stack([w.T.reshape(d, n, h) for w in (b.q, b.k, b.v)], axis=1)},
            "out": {"kernel": b.proj[0].T.reshape(n, h, d), "bias": out_bias},
        },
        "norm2": {"scale": b.norm2[0], "bias": b.norm2[1]},
        "mlp": {"wi": {"kernel": b.fc1[0].T, "bias": b.fc1[1]},
                "wo": {"kernel": b.fc2[0].T, "bias": b.fc2[1]}},
    }
  params = jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), params)
  try:
    params_file.check_tree(params, vit_param_shapes(arch), where)
  except params_file.ParamsFileError as e:
    raise ConversionError(str(e)) from e
  return Result(params, arch, notes)


# ---------------------------------------------------------------------------- files


def read_hf_config(weights_path: str) -> dict[str, Any]:
  """The vision part of a config.json next to the weights ({} if there is none)."""
  path = files.join(files.parent(weights_path), "config.json")
  if not files.isfile(path):
    return {}
  cfg = files.read_json_object(path, ConversionError)
  for nested in ("vision_config", "model_args"):
    if isinstance(cfg.get(nested), dict):
      cfg = {**cfg, **cfg[nested]}
  return cfg


def options_from(weights_path: str, num_heads: int | None, lossy: bool) -> Options:
  """Options from the command line and the config.json next to the weights, if any."""
  cfg = read_hf_config(weights_path)
  heads = num_heads or cfg.get("num_attention_heads") or cfg.get("num_heads")
  if not heads:
    raise ConversionError(
        f"{weights_path}: the number of attention heads is not in the weights and there is no "
        f"config.json next to it that says it; pass --num_heads")
  return Options(num_heads=int(heads), hidden_act=str(cfg.get("hidden_act", "gelu")),
                 layer_norm_eps=float(cfg.get("layer_norm_eps", TARGET_LAYER_NORM_EPS)),
                 lossy=lossy)


def convert(weights_path: str, *, num_heads: int | None = None, lossy: bool = False) -> Result:
  state, _ = params_file.read_safetensors(weights_path)
  return convert_state_dict(state, options_from(weights_path, num_heads, lossy), weights_path)


def save(path: str, result: Result, source: str) -> None:
  params_file.save(path, result.params, kind=KIND, architecture=result.architecture,
                   source=source)


def load(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, architecture) of a converted ViT file, shape-checked."""
  params, arch, _ = params_file.load(path, KIND)
  missing = [k for k in ("patch_size", "width", "depth", "num_heads", "mlp_ratio", "image_size")
             if k not in arch]
  if missing:
    raise params_file.ParamsFileError(f"{path}: architecture lacks {', '.join(missing)}")
  params_file.check_tree(params, vit_param_shapes(arch), path)
  return params, arch


def params_for_config(path: str, prompt_config: Any, tile_size: int) -> dict[str, Any]:
  """A converted ViT file's params for config.model.prompt's backbone; errors name the keys.

  The prompt encoder sees tiles resized to config.model.prompt.image_size (0: the tile size), so
  that size must give the file's number of patches.
  """
  params, arch = load(path)
  vit = prompt_config.vit
  for key in ("patch_size", "width", "depth", "num_heads", "mlp_ratio"):
    if int(vit[key]) != int(arch[key]):
      raise ValueError(f"config.model.prompt.vit.{key} = {vit[key]}, but the ViT in {path} has "
                       f"{key} = {arch[key]}")
  size = int(prompt_config.image_size) or int(tile_size)
  if size != int(arch["image_size"]):
    raise ValueError(f"the prompt encoder sees {size}-pixel images (config.model.prompt."
                     f"image_size, 0 = config.data.tile_size), but the ViT in {path} has position "
                     f"embeddings for {arch['image_size']} pixels: set "
                     f"config.model.prompt.image_size = {arch['image_size']}")
  return params
