"""Shared layers against closed forms and a NumPy attention reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax.models import layers


def _np_attention(q, k, v, bias=0.0):
  """softmax(q k^T / sqrt(d) + bias) v per head, [B, T, N, H] operands, in float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1]) + np.asarray(bias)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p, v)


def test_timestep_embedding_closed_form():
  t = jnp.array([0, 7, 999])
  emb = np.asarray(layers.timestep_embedding(t, 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  args = np.array([0, 7, 999])[:, None] * freqs
  np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], -1), atol=1e-4)


def test_fourier_features_closed_form():
  box = np.array([[0.1, 0.2, 0.6, 0.9]], np.float32)
  feats = np.asarray(layers.fourier_features(jnp.asarray(box), num_freqs=3, temperature=100.0))
  freqs = 100.0 ** (np.arange(3) / 3)
  args = freqs[:, None] * box[0][None, :]  # [F, D]
  expected = np.concatenate([np.sin(args), np.cos(args)], 0).reshape(-1)
  assert feats.shape == (1, 4 * 2 * 3)
  np.testing.assert_allclose(feats[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation", ["auto", "einsum", "xla"])
def test_dot_product_attention_matches_numpy(implementation):
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, s, 3, 8)).astype(np.float32) for s in (5, 7, 7))
  out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                     implementation)
  np.testing.assert_allclose(np.asarray(out), _np_attention(q, k, v), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", ["auto", "einsum", "xla"])
@pytest.mark.parametrize("bias_shape", [(3, 5, 7), (2, 3, 5, 7)])
def test_attention_bias_matches_numpy(implementation, bias_shape):
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(2, s, 3, 8)).astype(np.float32) for s in (5, 7, 7))
  bias = 3 * rng.normal(size=bias_shape).astype(np.float32)
  out = layers.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                     implementation, jnp.asarray(bias))
  np.testing.assert_allclose(np.asarray(out), _np_attention(q, k, v, bias), rtol=1e-4,
                             atol=1e-5)


def test_einsum_attention_gradient_and_bfloat16():
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32) for _ in range(3))
  loss = lambda fn: jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))),
                                     argnums=(0, 1, 2)))
  ours = loss(layers.einsum_attention)(q, k, v)
  ref = loss(lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"))(q, k, v)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  half = jax.jit(layers.einsum_attention)(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), _np_attention(q, k, v), atol=5e-2)
  with pytest.raises(ValueError, match="implementation"):
    layers.dot_product_attention(q, k, v, "flash")


@pytest.mark.parametrize("cross", [False, True])
def test_attention_module_matches_reference(cross):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  ctx = rng.normal(size=(2, 4, 12)).astype(np.float32) if cross else None
  mod = layers.Attention(num_heads=2, head_dim=8)
  params = mod.init(jax.random.key(0), x, ctx)["params"]
  out = np.asarray(mod.apply({"params": params}, x, ctx))
  src = x if ctx is None else ctx
  if cross:
    q = np.einsum("btc,cnh->btnh", x, params["q"]["kernel"])
    kv = np.einsum("bsc,cknh->bsknh", src, params["kv"]["kernel"])
    k, v = kv[:, :, 0], kv[:, :, 1]
  else:
    qkv = np.einsum("btc,cknh->btknh", x, params["qkv"]["kernel"])
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  ref = np.einsum("btnh,nhc->btc", _np_attention(q, k, v), params["out"]["kernel"])
  ref = ref + np.asarray(params["out"]["bias"])
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
