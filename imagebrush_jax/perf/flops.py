"""Analytic FLOPs of ImageBrush's networks, computed from the config alone.

Counts the multiply-adds of every convolution, dense layer and attention product as 2 FLOPs, as
MFU conventions do (normalisation, activations and the optimizer are left out). Convolution taps
that fall on zero padding are not counted, as XLA's cost analysis does not count them, so the two
can be compared layer for layer. The count is of the paper's model: the layers a variant plugs in
(config.model.variant) are not in it. A training step costs 3x the forward FLOPs of what is
trained (forward, input and weight gradients), less the input gradient of the first layers, plus
the frozen autoencoder's forward pass in latent space.
"""
from __future__ import annotations

import dataclasses
import math

import ml_collections

from imagebrush_jax.models import autoencoder as ae

# jax.checkpoint_policies names by whether a rematerialised block computes its matmuls again in
# the backward pass (policies not listed: unknown, so no hardware count is predicted). The
# dot-saving policies save dot_general / conv_general_dilated outputs only: the CPU's
# matmul-gradient convolution (a custom VJP) and cuDNN's fused attention (a custom call) are
# computed again, so on those paths the prediction is low.
_POLICY_RECOMPUTES_MATMULS = {"": True, "nothing_saveable": True, "everything_saveable": False,
                              "dots_saveable": False, "checkpoint_dots": False}


@dataclasses.dataclass
class Count:
  """Forward FLOPs of a network: in total, inside rematerialised blocks, of its first layer
  (whose input needs no gradient, so it costs 2x, not 3x, in training) and of weightless steps
  on its input (forward only: 1x)."""
  total: float = 0.0
  remat: float = 0.0
  first_layer: float = 0.0
  forward_only: float = 0.0

  @property
  def training(self) -> float:
    """FLOPs of forward, input and weight gradients."""
    return 3 * self.total - self.first_layer - 2 * self.forward_only

  def add(self, flops: float, remat: bool = False) -> float:
    self.total += flops
    if remat:
      self.remat += flops
    return flops

  def __iadd__(self, other: "Count") -> "Count":
    self.total += other.total
    self.remat += other.remat
    self.first_layer += other.first_layer
    self.forward_only += other.forward_only
    return self


# ---------------------------------------------------------------------------- primitives
def _taps(size: int, kernel: int, stride: int, pad: int) -> tuple[int, int]:
  """(output length, kernel taps over all outputs that land inside the input) along one axis."""
  out = (size + 2 * pad - kernel) // stride + 1
  taps = sum(sum(1 for i in range(kernel) if 0 <= o * stride - pad + i < size) for o in range(out))
  return out, taps


def conv(n: int, h: int, w: int, cin: int, cout: int, kernel: int = 3, stride: int = 1,
         pad: int | None = None) -> tuple[float, int, int]:
  """(FLOPs, out height, out width) of an NHWC convolution with symmetric padding."""
  pad = kernel // 2 if pad is None else pad
  ho, taps_h = _taps(h, kernel, stride, pad)
  wo, taps_w = _taps(w, kernel, stride, pad)
  return 2.0 * n * taps_h * taps_w * cin * cout, ho, wo


def dense(tokens: int, din: int, dout: int) -> float:
  return 2.0 * tokens * din * dout


def attention(batch: int, queries: int, keys: int, width: int) -> float:
  """q k^T and the weighted sum of values, over all heads (heads x head_dim = width)."""
  return 4.0 * batch * queries * keys * width


# ---------------------------------------------------------------------------- the UNet
GRID_POSITION_FEATURES = 2 * 2 * 4 + 9 + 2  # models/layers.grid_position_features


def _spatial_transformer(kind: str, b: int, n: int, c: int, depth: int, ctx_len: int,
                         ctx_dim: int, grid_positions: bool = False) -> float:
  f = 2 * dense(b * n, c, c)  # proj_in, proj_out
  if grid_positions:  # the position projection, computed once and broadcast over the batch
    f += dense(n, GRID_POSITION_FEATURES, c)
  for _ in range(depth):
    if "self" in kind:
      f += dense(b * n, c, 3 * c) + attention(b, n, n, c) + dense(b * n, c, c)
    if "cross" in kind:
      f += (dense(b * n, c, c) + dense(b * ctx_len, ctx_dim, 2 * c) + attention(b, n, ctx_len, c)
            + dense(b * n, c, c))
    f += dense(b * n, c, 8 * c) + dense(b * n, 4 * c, c)  # GEGLU feed-forward
  return f


def unet(u: ml_collections.ConfigDict, b: int, h: int, w: int, in_channels: int,
         out_channels: int, ctx_len: int, ctx_dim: int, remat: bool) -> Count:
  """Forward FLOPs of UNet(**u) on a [b, h, w, in_channels] input and [b, ctx_len, ctx_dim]
  context (models/unet.py's layout; ResBlocks and SpatialTransformers are the remat blocks)."""
  count = Count()
  channels, kinds = tuple(u.channels), tuple(u.attention)
  temb_dim = 4 * channels[0]
  count.add(dense(b, channels[0], temb_dim) + dense(b, temb_dim, temb_dim))
  if u.pooled_prompt:  # one query attending over the prompt, then its projection
    count.add(dense(b, ctx_dim, ctx_dim) + dense(b * ctx_len, ctx_dim, 2 * ctx_dim)
              + attention(b, 1, ctx_len, ctx_dim) + dense(b, ctx_dim, ctx_dim)
              + dense(b, ctx_dim, temb_dim))

  def res(hh, ww, cin, cout):
    f = conv(b, hh, ww, cin, cout)[0] + dense(b, temb_dim, cout) + conv(b, hh, ww, cout, cout)[0]
    if cin != cout:
      f += conv(b, hh, ww, cin, cout, kernel=1)[0]
    count.add(f, remat)

  def spatial(kind, hh, ww, c):
    if kind != "none":
      count.add(_spatial_transformer(kind, b, hh * ww, c, u.transformer_depth, ctx_len, ctx_dim,
                                     bool(u.grid_positions)), remat)

  f, hh, ww = conv(b, h, w, in_channels, channels[0])
  count.first_layer = count.add(f)
  cur, skips, last = channels[0], [channels[0]], len(channels) - 1
  for lvl, (ch, kind) in enumerate(zip(channels, kinds)):
    for _ in range(u.num_res_blocks):
      res(hh, ww, cur, ch)
      cur = ch
      spatial(kind, hh, ww, ch)
      skips.append(ch)
    if lvl != last:
      f, hh, ww = conv(b, hh, ww, cur, cur, stride=2)
      count.add(f)
      skips.append(cur)
  res(hh, ww, cur, cur)
  spatial(u.mid_attention, hh, ww, cur)
  res(hh, ww, cur, cur)
  for lvl in reversed(range(len(channels))):
    ch = channels[lvl]
    for _ in range(u.num_res_blocks + 1):
      res(hh, ww, cur + skips.pop(), ch)
      cur = ch
      spatial(kinds[lvl], hh, ww, ch)
    if lvl != 0:
      hh, ww = 2 * hh, 2 * ww
      count.add(conv(b, hh, ww, cur, cur)[0])
  count.add(conv(b, hh, ww, cur, out_channels)[0])
  return count


# ---------------------------------------------------------------------------- the DiT
def dit(d: ml_collections.ConfigDict, b: int, h: int, w: int, in_channels: int,
        out_channels: int, ctx_len: int, ctx_dim: int, remat: bool) -> Count:
  """Forward FLOPs of DiT(**d) on a [b, h, w, in_channels] input and [b, ctx_len, ctx_dim]
  prompt tokens (models/dit.py; its blocks are the remat units)."""
  count = Count()
  p, width = int(d.patch_size), int(d.width)
  n = (h // p) * (w // p)
  count.first_layer = count.add(dense(b * n, p * p * in_channels, width))
  count.add(dense(n, GRID_POSITION_FEATURES, width))  # once, broadcast over the batch
  count.add(dense(b, width, width) * 2)  # timestep MLP
  count.add(dense(b, ctx_dim, ctx_dim) + dense(b * ctx_len, ctx_dim, 2 * ctx_dim)
            + attention(b, 1, ctx_len, ctx_dim) + dense(b, ctx_dim, ctx_dim)
            + dense(b, ctx_dim, width))  # pooled prompt
  count.add(dense(b * ctx_len, ctx_dim, width))  # prompt projection
  keys = n + ctx_len
  for _ in range(int(d.depth)):
    count.add(dense(b, width, 6 * width) + dense(b * n, width, width)
              + dense(b * keys, width, 2 * width) + attention(b, n, keys, width)
              + dense(b * n, width, width)
              + 2 * dense(b * n, width, int(d.mlp_ratio) * width)
              + (dense(b, width, int(d.num_heads)) if d.get("position_bias") else 0), remat)
  count.add(dense(b, width, 2 * width) + dense(b * n, width, p * p * out_channels))
  return count


# ---------------------------------------------------------------------------- the prompt encoder
def _transformer(count: Count, b: int, n: int, width: int, depth: int, mlp_ratio: int,
                 remat: bool) -> None:
  for _ in range(depth):
    count.add(dense(b * n, width, 3 * width) + attention(b, n, n, width)
              + dense(b * n, width, width) + 2 * dense(b * n, width, mlp_ratio * width), remat)


def prompt_encoder(p: ml_collections.ConfigDict, b: int, num_examples: int, tile: int,
                   remat: bool) -> tuple[Count, int]:
  """(forward FLOPs, number of prompt tokens) of the PromptEncoder on b prompts of K pairs.

  The resize to p.image_size (jax.image.resize: two matmuls per image, no weights) runs forward
  only; the patch embedding after it is the first layer.
  """
  count = Count()
  per_prompt = (3 if p.pair_difference else 2) * num_examples + 1  # images the ViT reads
  images = b * per_prompt
  size = int(p.image_size) or tile
  if size != tile:
    count.forward_only += count.add(dense(images * size * tile * 3, tile, 1) +
                                    dense(images * size * size * 3, tile, 1))
  vit = p.vit
  f, hp, wp = conv(images, size, size, 3, vit.width, kernel=vit.patch_size,
                   stride=vit.patch_size, pad=0)
  count.first_layer += count.add(f)
  patches = hp * wp
  _transformer(count, images, patches, vit.width, vit.depth, vit.mlp_ratio, remat)
  mixer = p.mixer
  count.add(dense(images * patches, vit.width, mixer.width))
  count.add(dense(b, 4 * 2 * p.box_fourier_freqs, mixer.width) + dense(b, mixer.width,
                                                                       mixer.width))
  tokens = per_prompt * patches + 1
  _transformer(count, b, tokens, mixer.width, mixer.depth, mixer.mlp_ratio, remat)
  return count, tokens


# ---------------------------------------------------------------------------- the autoencoder
def _ae_resnet(n: int, h: int, w: int, cin: int, cout: int) -> float:
  f = conv(n, h, w, cin, cout)[0] + conv(n, h, w, cout, cout)[0]
  return f + (conv(n, h, w, cin, cout, kernel=1)[0] if cin != cout else 0.0)


def _ae_mid(arch: ae.AutoencoderConfig, n: int, h: int, w: int, c: int) -> float:
  f = 2 * _ae_resnet(n, h, w, c, c)
  if arch.mid_block_attention:
    f += 4 * dense(n * h * w, c, c) + attention(n, h * w, h * w, c)
  return f


def autoencoder_encode(arch: ae.AutoencoderConfig, n: int, size: int) -> float:
  """Forward FLOPs of encoding n images of size x size pixels (models/autoencoder.py)."""
  chans = tuple(arch.block_out_channels)
  f, h, w = conv(n, size, size, arch.in_channels, chans[0])
  cur = chans[0]
  for i, ch in enumerate(chans):
    for _ in range(arch.layers_per_block):
      f += _ae_resnet(n, h, w, cur, ch)
      cur = ch
    if i != len(chans) - 1:  # zero row and column appended, then a stride-2 3x3 conv
      down, h, w = conv(n, h + 1, w + 1, cur, cur, stride=2, pad=0)
      f += down
  f += _ae_mid(arch, n, h, w, cur) + conv(n, h, w, cur, 2 * arch.latent_channels)[0]
  if arch.use_quant_conv:
    f += conv(n, h, w, 2 * arch.latent_channels, 2 * arch.latent_channels, kernel=1)[0]
  return f


def autoencoder_decode(arch: ae.AutoencoderConfig, n: int, latent_size: int) -> float:
  """Forward FLOPs of decoding n latents of latent_size x latent_size cells."""
  lc, h = arch.latent_channels, latent_size
  chans = tuple(reversed(arch.block_out_channels))
  f = conv(n, h, h, lc, lc, kernel=1)[0] if arch.use_post_quant_conv else 0.0
  f += conv(n, h, h, lc, chans[0])[0] + _ae_mid(arch, n, h, h, chans[0])
  cur = chans[0]
  for i, ch in enumerate(chans):
    for _ in range(arch.layers_per_block + 1):
      f += _ae_resnet(n, h, h, cur, ch)
      cur = ch
    if i != len(chans) - 1:
      h *= 2
      f += conv(n, h, h, cur, cur)[0]
  return f + conv(n, h, h, cur, arch.out_channels)[0]


# ---------------------------------------------------------------------------- whole steps
@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one step over the global batch.

  model: what the step must compute (the MFU numerator).
  hardware: what it computes with rematerialisation's repeated forward passes (None when the
    remat policy's effect is not known); XLA's cost analysis should agree with it.
  parts: forward FLOPs by network.
  """
  model: float
  hardware: float | None
  parts: dict[str, float]


def _sizes(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """(K, pixel tile, diffusion-space tile, UNet input channels) of the paper's model."""
  k, tile = int(config.data.num_examples), int(config.data.tile_size)
  c = int(config.model.in_channels)
  return k, tile, tile // int(config.model.latent_factor), 2 * c + 1  # x_t, known grid, mask


def _networks(config: ml_collections.ConfigDict, b: int, remat: bool,
              unet_batch: int | None = None) -> tuple[Count, Count]:
  """Forward counts of (the denoiser, UNet or DiT, on unet_batch grids, default b; prompt
  encoder on b prompts)."""
  k, tile, t, cin = _sizes(config)
  prompt, tokens = prompt_encoder(config.model.prompt, b, k, tile, remat)
  denoiser = dit if config.model.backbone == "dit" else unet
  section = config.model.dit if config.model.backbone == "dit" else config.model.unet
  net = denoiser(section, unet_batch or b, (k + 1) * t, 2 * t, cin,
                 int(config.model.in_channels), tokens, int(config.model.prompt.mixer.width),
                 remat)
  return net, prompt


def train_step(config: ml_collections.ConfigDict, batch_size: int,
               autoencoder: ae.AutoencoderConfig | None = None,
               cached_latents: bool | None = None) -> StepFlops:
  """FLOPs of one train step on `batch_size` grids (in latent space, `autoencoder` encodes every
  cell of the grid, forward only: it is frozen; not with cached latents, default
  config.data.cached_latents, where the step reads the cells' moments instead)."""
  if cached_latents is None:
    cached_latents = bool(config.data.get("cached_latents", False))
  remat = bool(config.model.remat)
  net, prompt = _networks(config, batch_size, remat)
  trained = Count()
  trained += net
  trained += prompt
  model = trained.training
  parts = {"unet": net.total, "prompt_encoder": prompt.total}
  if autoencoder is not None and not cached_latents:
    k, tile = int(config.data.num_examples), int(config.data.tile_size)
    parts["autoencoder_encode"] = autoencoder_encode(autoencoder, batch_size * 2 * (k + 1), tile)
    model += parts["autoencoder_encode"]
  policy = str(config.model.remat_policy or "")
  if not remat:
    hardware = model
  elif policy in _POLICY_RECOMPUTES_MATMULS:
    hardware = model + (trained.remat if _POLICY_RECOMPUTES_MATMULS[policy] else 0.0)
  else:
    hardware = None
  return StepFlops(model=model, hardware=hardware, parts=parts)


def sample(config: ml_collections.ConfigDict, batch_size: int, num_steps: int, guided: bool,
           autoencoder: ae.AutoencoderConfig | None = None) -> StepFlops:
  """FLOPs of editing `batch_size` grids: the prompt encoded once, `num_steps` UNet passes (on
  twice the batch with guidance), and in latent space the grid's encoding and the target's
  decoding."""
  net, prompt = _networks(config, batch_size, False, batch_size * (2 if guided else 1))
  parts = {"prompt_encoder": prompt.total, "unet": num_steps * net.total}
  if autoencoder is not None:
    k, tile, t, _ = _sizes(config)
    parts["autoencoder_encode"] = autoencoder_encode(autoencoder, batch_size * 2 * (k + 1), tile)
    parts["autoencoder_decode"] = autoencoder_decode(autoencoder, batch_size, t)
  total = math.fsum(parts.values())
  return StepFlops(model=total, hardware=total, parts=parts)


def model_flops_fn(config: ml_collections.ConfigDict,
                   autoencoder: ae.AutoencoderConfig | None = None):
  """global batch -> the train step's model FLOPs (MFU's numerator), for the paper's model;
  None with a variant's plug-ins, whose layers this count leaves out (XLA's count then)."""
  if config.model.variant:
    return None
  return lambda batch_size: train_step(config, batch_size, autoencoder).model
