"""Visual prompt encoder: a shared ViT over E_k, E'_k and I, role and box tokens, a mixer.

tokens = Mixer([ViT(E_k) + role_before + index_k ; ViT(E'_k) + role_after + index_k ;
                ViT(I) + role_query ; [ViT((E'_k - E_k) / 2) + role_change + index_k ;]
                extra tokens ; MLP(Fourier(box))])
The output tokens [B, (2K+1)*P + M + 1, width] ((3K+1)*P with the pair difference) feed the
UNet's cross-attention. `extra_tokens`, when given, is a module (before, after, query) ->
[B, M, width] whose tokens join the image tokens before the mixer (an extension point for
variants; the paper has none); the diagnostic task oracle adds one token. For classifier-free
guidance, rows with `drop_prompt` get the learned null token in every position instead (one token
broadcast: cross-attention over identical keys equals attention to that one token, so the null
prompt batches with any K and any token count).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from imagebrush_jax.models import layers
from imagebrush_jax.models import runtime as runtime_lib

WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)
ROLE_BEFORE, ROLE_AFTER, ROLE_QUERY, ROLE_CHANGE = 0, 1, 2, 3


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
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  @nn.compact
  def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
    n, h, w, _ = images.shape
    p, dtype = self.patch_size, self.runtime.dtype
    if h % p or w % p:
      raise ValueError(f"prompt image size {h}x{w} is not divisible by patch size {p}")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=dtype,
                param_dtype=jnp.float32, name="patch_embed")(images.astype(dtype))
    x = x.reshape(n, -1, self.width)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), x.shape[1:], jnp.float32)
    x = x + pos.astype(dtype)
    return layers.Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dropout,
                              self.runtime, name="encoder")(x, deterministic)


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


class PromptEncoder(nn.Module):
  """Encodes (examples before [B,K,S,S,3], after [B,K,S,S,3], query [B,S,S,3], box [B,4]) to tokens.

  Images are pixels in [-1, 1]; if `image_size` > 0 they are resized to it first (e.g. 224 for a
  ViT pretrained at that size). `width`, `depth`, `num_heads`, `mlp_ratio` size the mixer, the
  bidirectional transformer over all tokens. In training, boxes are dropped to the whole-image
  box at `box_drop_rate` (rng stream 'dropout'). With `pair_difference` the ViT also reads each
  pair's change E' - E (the edit itself, as Prompt Diffusion stacks its pair), K more images.
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
  dropout: float = 0.0
  extra_tokens: nn.Module | None = None
  pair_difference: bool = False
  task_oracle_vocab: int = 0  # > 0: a diagnostic token of the true task's id (see __call__)
  runtime: runtime_lib.Runtime = runtime_lib.Runtime()

  def _resize(self, images: jax.Array) -> jax.Array:
    n, h, w, c = images.shape
    if self.image_size <= 0 or (h, w) == (self.image_size, self.image_size):
      return images
    return jax.image.resize(images, (n, self.image_size, self.image_size, c), "bilinear")

  @nn.compact
  def __call__(self, before: jax.Array, after: jax.Array, query: jax.Array, box: jax.Array,
               drop_prompt: jax.Array | None = None, deterministic: bool = True,
               task_id: jax.Array | None = None) -> jax.Array:
    b, k = before.shape[:2]
    dtype = self.runtime.dtype
    if after.shape[:2] != (b, k) or query.shape[0] != b:
      raise ValueError(f"prompt shapes disagree: before {before.shape}, after {after.shape}, "
                       f"query {query.shape}")
    if k > self.max_examples:
      raise ValueError(f"{k} examples exceed model.prompt.max_examples={self.max_examples}")
    # One backbone pass over the N = 2K+1 images: [B, N, S, S, 3] -> [B, N, P, D_vit]; with
    # pair_difference also each pair's change (E' - E) / 2, in [-1, 1] (N = 3K+1).
    images = [before, after, query[:, None]]
    if self.pair_difference:
      images.append((after - before) / 2)
    images = jnp.concatenate(images, axis=1)
    n = images.shape[1]
    feats = self.vit(self._resize(images.reshape(b * n, *images.shape[2:])), deterministic)
    feats = feats.reshape(b, n, *feats.shape[1:])
    x = nn.Dense(self.width, dtype=dtype, param_dtype=jnp.float32, name="proj")(feats)

    roles = [ROLE_BEFORE] * k + [ROLE_AFTER] * k + [ROLE_QUERY]
    roles += [ROLE_CHANGE] * k if self.pair_difference else []
    role_emb = nn.Embed(4 if self.pair_difference else 3, self.width,
                        embedding_init=nn.initializers.normal(0.02), param_dtype=jnp.float32,
                        name="role_embed")(jnp.array(roles))
    # Example index k for E_k and E'_k; the query gets none (a zero row).
    index_table = nn.Embed(self.max_examples, self.width,
                           embedding_init=nn.initializers.normal(0.02), param_dtype=jnp.float32,
                           name="index_embed")(jnp.arange(k))
    index_emb = [index_table, index_table, jnp.zeros((1, self.width))]
    index_emb = jnp.concatenate(index_emb + ([index_table] if self.pair_difference else []),
                                axis=0)
    x = x + (role_emb + index_emb).astype(dtype)[None, :, None, :]
    x = x.reshape(b, -1, self.width)

    if self.extra_tokens is not None:
      x = jnp.concatenate([x, self.extra_tokens(before, after, query).astype(dtype)], axis=1)
    if self.task_oracle_vocab:
      # Diagnostic only (never in a shipped config): the true task's id as one more token, so
      # identifying the edit costs nothing and training measures the editing network alone.
      if task_id is None:
        raise ValueError("a task-oracle model (config.model.task_oracle) needs the batch's "
                         "task_id; it is a diagnostic, not a model for editing")
      oracle = nn.Embed(self.task_oracle_vocab, self.width,
                        embedding_init=nn.initializers.normal(0.02), param_dtype=jnp.float32,
                        name="task_oracle")(jnp.asarray(task_id, jnp.int32))
      x = jnp.concatenate([x, oracle[:, None].astype(dtype)], axis=1)

    if not deterministic and self.box_drop_rate > 0:
      box = drop_boxes(box, self.make_rng("dropout"), self.box_drop_rate)
    box_tok = BoxEmbedding(self.width, self.box_fourier_freqs, dtype=dtype,
                           name="box_embed")(box)
    x = jnp.concatenate([x, box_tok], axis=1)
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dropout,
                           self.runtime, name="mixer")(x, deterministic)

    null = self.param("null_token", nn.initializers.normal(0.02), (self.width,), jnp.float32)
    if drop_prompt is not None:
      x = jnp.where(drop_prompt[:, None, None], null.astype(x.dtype), x)
    return x

  def null_tokens(self, batch: int, num_tokens: int) -> jax.Array:
    """The unconditional prompt: the learned null token in every one of `num_tokens` positions."""
    null = self.get_variable("params", "null_token")
    return jnp.broadcast_to(null.astype(self.runtime.dtype), (batch, num_tokens, self.width))
