"""Visual prompt encoder: a shared ViT over E_k, E'_k and I, role and box tokens, a mixer.

tokens = Mixer([ViT(E_k) + role_before + index_k ; ViT(E'_k) + role_after + index_k ;
                ViT(I) + role_query ; MLP(Fourier(box))])          (pair_input 'separate', paper)
With pair_input 'concat' the ViT reads each example pair as one image, E_k and E'_k stacked on
channels (ViT([E_k, E'_k]) + role_before + index_k), so the first layer already compares them
pixel by pixel; 'concat_dihedral' stacks E'_k with all 8 dihedral views of E_k, so geometric edits
are as visible as per-pixel ones. The query is zero-padded to the same channels in both.
With pair_stats, one more token per pair carries the colour correlation between E'_k and each
dihedral view of E_k (pair_statistics): a global edit that is a flip/rotation followed by a colour
map shows as one view whose correlation matrix is that map, a signal the ViT would have to learn
to compute.
The output tokens [B, N*P (+ K with pair_stats) + 1, width], N = 2K+1 images ('separate') or
K+1 (paired), feed the UNet's cross-attention. For classifier-free guidance, rows with
`drop_prompt` get the learned null token in every position instead (one token broadcast:
cross-attention over identical keys equals attention to that one token, so the null prompt
batches with any K and any token count).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from imagebrush_jax.models import layers
from imagebrush_jax.models.dihedral import dihedral_views, stack_dihedral

WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)
ROLE_BEFORE, ROLE_AFTER, ROLE_QUERY = 0, 1, 2
PAIR_INPUTS = ("separate", "concat", "concat_dihedral")


def prompt_images(before: jax.Array, after: jax.Array, query: jax.Array,
                  pair_input: str) -> tuple[jax.Array, list[int]]:
  """The ViT's input images [B, N, S, S, C] and each one's role, per `pair_input`.

  separate: N = 2K+1 images (E_1..E_K, E'_1..E'_K, I), C = 3.
  concat: N = K+1 ([E_k, E'_k] per pair, then [I, 0]), C = 6.
  concat_dihedral: N = K+1 ([E'_k, 8 dihedral views of E_k], then [I, 0]), C = 27.
  """
  k = before.shape[1]
  if pair_input == "separate":
    return (jnp.concatenate([before, after, query[:, None]], axis=1),
            [ROLE_BEFORE] * k + [ROLE_AFTER] * k + [ROLE_QUERY])
  if pair_input == "concat":
    pairs = jnp.concatenate([before, after], axis=-1)
  elif pair_input == "concat_dihedral":
    pairs = jnp.concatenate([after, stack_dihedral(before)], axis=-1)
  else:
    raise ValueError(f"model.prompt.pair_input must be one of {PAIR_INPUTS}, got {pair_input!r}")
  pad = jnp.zeros((*query.shape[:-1], pairs.shape[-1] - query.shape[-1]), query.dtype)
  padded_query = jnp.concatenate([query, pad], axis=-1)[:, None]
  return jnp.concatenate([pairs, padded_query], axis=1), [ROLE_BEFORE] * k + [ROLE_QUERY]


class ViT(nn.Module):
  """Plain pre-norm ViT backbone: patchify conv, learned position embedding, `depth` blocks.

  Sizes from tiny (patch 4, width 128) to ViT-B/16 (width 768, depth 12, 12 heads), the size of
  EVA-02-B. Returns all patch tokens [N, P, width] (no class token).
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  attention_impl: str = "auto"
  remat: bool = False
  remat_policy: str = ""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    n, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"prompt image size {h}x{w} is not divisible by patch size {p}")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, name="patch_embed")(images.astype(self.dtype))
    x = x.reshape(n, -1, self.width)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), x.shape[1:], jnp.float32)
    x = x + pos.astype(self.dtype)
    return layers.Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dropout,
                              self.attention_impl, self.remat, self.remat_policy, self.dtype,
                              name="encoder")(x, deterministic)


class BoxEmbedding(nn.Module):
  """GLIGEN-style box token: Fourier features of [x0, y0, x1, y1], then an MLP -> [B, 1, D]."""
  width: int
  num_freqs: int = 8
  temperature: float = 100.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, box: jax.Array) -> jax.Array:
    h = layers.fourier_features(box, self.num_freqs, self.temperature).astype(self.dtype)
    h = nn.silu(nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(h))
    h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(h)
    return h[:, None, :]


def drop_boxes(box: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
  """Replaces each row's box by the whole-image box with probability `rate` (training)."""
  drop = jax.random.bernoulli(rng, rate, (box.shape[0], 1))
  return jnp.where(drop, jnp.asarray(WHOLE_IMAGE_BOX, box.dtype), box)


def pair_statistics(before: jax.Array, after: jax.Array, eps: float = 1e-4) -> jax.Array:
  """Colour statistics of each example pair: [B, K, S, S, 3] x 2 -> [B, K, 8*9 + 12].

  For each of the 8 dihedral views V of E: the 3x3 correlation between the standardised channels
  of V(E) and E' (mean over pixels); then the channel means and standard deviations of E and E'.
  """
  def standardise(x):
    mean = x.mean(axis=(-3, -2), keepdims=True)
    std = jnp.sqrt(x.var(axis=(-3, -2), keepdims=True) + eps)
    return (x - mean) / std, mean[..., 0, 0, :], std[..., 0, 0, :]

  views = jnp.stack([before, *dihedral_views(before)], axis=2)  # [B, K, 8, S, S, 3]
  z_views, mean_views, std_views = standardise(views)
  z_after, mean_after, std_after = standardise(after)
  mean_before, std_before = mean_views[:, :, 0], std_views[:, :, 0]  # view 0 is E itself
  pixels = before.shape[-3] * before.shape[-2]
  corr = jnp.einsum("bkvhwc,bkhwd->bkvcd", z_views, z_after) / pixels
  return jnp.concatenate([corr.reshape(*corr.shape[:2], -1), mean_before, std_before,
                          mean_after, std_after], axis=-1)


class PromptEncoder(nn.Module):
  """Encodes (examples before [B,K,S,S,3], after [B,K,S,S,3], query [B,S,S,3], box [B,4]) to tokens.

  Images are pixels in [-1, 1]; if `image_size` > 0 they are resized to it first (e.g. 224 for a
  ViT pretrained at that size). In training, boxes are dropped to the whole-image box at
  `box_drop_rate` (rng stream 'dropout').
  """
  vit: ViT
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int = 4
  max_examples: int = 8
  box_fourier_freqs: int = 8
  box_drop_rate: float = 0.0
  image_size: int = 0
  pair_input: str = "separate"
  pair_stats: bool = False
  dropout: float = 0.0
  attention_impl: str = "auto"
  remat: bool = False
  remat_policy: str = ""
  dtype: jnp.dtype = jnp.float32

  def _resize(self, images: jax.Array) -> jax.Array:
    n, h, w, c = images.shape
    if self.image_size <= 0 or (h, w) == (self.image_size, self.image_size):
      return images
    return jax.image.resize(images, (n, self.image_size, self.image_size, c), "bilinear")

  @nn.compact
  def __call__(self, before: jax.Array, after: jax.Array, query: jax.Array, box: jax.Array,
               drop_prompt: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    b, k = before.shape[:2]
    if after.shape[:2] != (b, k) or query.shape[0] != b:
      raise ValueError(f"prompt shapes disagree: before {before.shape}, after {after.shape}, "
                       f"query {query.shape}")
    if k > self.max_examples:
      raise ValueError(f"{k} examples exceed model.prompt.max_examples={self.max_examples}")
    # One backbone pass over all N images: [B, N, S, S, C] -> [B, N, P, D_vit].
    images, roles = prompt_images(before, after, query, self.pair_input)
    n = images.shape[1]
    feats = self.vit(self._resize(images.reshape(b * n, *images.shape[2:])), deterministic)
    feats = feats.reshape(b, n, *feats.shape[1:])
    x = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="proj")(feats)

    role_emb = nn.Embed(3, self.width, embedding_init=nn.initializers.normal(0.02),
                        param_dtype=jnp.float32, name="role_embed")(jnp.array(roles))
    # Example index k for E_k and E'_k (or their pair image); the query gets none (a zero row).
    index_table = nn.Embed(self.max_examples, self.width,
                           embedding_init=nn.initializers.normal(0.02), param_dtype=jnp.float32,
                           name="index_embed")(jnp.arange(k))
    index_rows = [index_table] * ((n - 1) // k)  # 2 for separate, 1 for paired
    index_emb = jnp.concatenate([*index_rows, jnp.zeros((1, self.width))], axis=0)
    x = x + (role_emb + index_emb).astype(self.dtype)[None, :, None, :]
    x = x.reshape(b, -1, self.width)

    if self.pair_stats:  # one token per pair, after the image tokens
      stats = pair_statistics(before.astype(jnp.float32), after.astype(jnp.float32))
      h = nn.gelu(nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                           name="stats_fc1")(stats.astype(self.dtype)))
      h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="stats_fc2")(h)
      x = jnp.concatenate([x, h + index_table.astype(self.dtype)[None]], axis=1)

    if not deterministic and self.box_drop_rate > 0:
      box = drop_boxes(box, self.make_rng("dropout"), self.box_drop_rate)
    box_tok = BoxEmbedding(self.width, self.box_fourier_freqs, dtype=self.dtype,
                           name="box_embed")(box)
    x = jnp.concatenate([x, box_tok], axis=1)
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dropout,
                           self.attention_impl, self.remat, self.remat_policy, self.dtype,
                           name="mixer")(x, deterministic)

    null = self.param("null_token", nn.initializers.normal(0.02), (self.width,), jnp.float32)
    if drop_prompt is not None:
      x = jnp.where(drop_prompt[:, None, None], null.astype(x.dtype), x)
    return x

  def null_tokens(self, batch: int, num_tokens: int) -> jax.Array:
    """The unconditional prompt: the learned null token in every one of `num_tokens` positions."""
    null = self.get_variable("params", "null_token")
    return jnp.broadcast_to(null.astype(self.dtype), (batch, num_tokens, self.width))


def prompt_encoder_from_config(cfg: ml_collections.ConfigDict, dtype: str, remat: bool,
                               remat_policy: str, box_drop_rate: float) -> PromptEncoder:
  """Builds the encoder from `config.model.prompt` (dtype/remat/box drop are model-wide knobs)."""
  compute_dtype = layers.resolve_dtype(dtype)
  vit = ViT(patch_size=cfg.vit.patch_size, width=cfg.vit.width, depth=cfg.vit.depth,
            num_heads=cfg.vit.num_heads, mlp_ratio=cfg.vit.mlp_ratio, dropout=cfg.dropout,
            attention_impl=cfg.attention_impl, remat=remat, remat_policy=remat_policy,
            dtype=compute_dtype)
  return PromptEncoder(
      vit=vit, width=cfg.mixer.width, depth=cfg.mixer.depth, num_heads=cfg.mixer.num_heads,
      mlp_ratio=cfg.mixer.mlp_ratio, max_examples=cfg.max_examples,
      box_fourier_freqs=cfg.box_fourier_freqs, box_drop_rate=box_drop_rate,
      image_size=cfg.image_size, pair_input=cfg.get("pair_input", "separate"),
      pair_stats=cfg.get("pair_stats", False),
      dropout=cfg.dropout, attention_impl=cfg.attention_impl, remat=remat,
      remat_policy=remat_policy, dtype=compute_dtype)
