"""Prompt encoder: token layout, roles, boxes, null tokens, box dropping, resizing."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax.models import prompt_encoder as pe
from tests import fake_params


random_params = fake_params.module_params


def _encoder(**kw):
  vit = pe.ViT(patch_size=4, width=16, depth=1, num_heads=2)
  return pe.PromptEncoder(vit=vit, width=24, depth=1, num_heads=2, max_examples=3, **kw)


def _prompt(b=3, k=2, tile=8, seed=0):
  rng = np.random.default_rng(seed)
  img = lambda *s: jnp.asarray(rng.uniform(-1, 1, s), jnp.float32)
  box = jnp.asarray([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.9], [0.3, 0.3, 0.7, 0.6]][:b])
  return img(b, k, tile, tile, 3), img(b, k, tile, tile, 3), img(b, tile, tile, 3), box


@pytest.fixture(scope="module")
def encoded():
  """One compiled encoder applied to variants of one prompt (same shapes, one compilation)."""
  enc = _encoder()
  before, after, query, box = _prompt()
  params = random_params(enc, before, after, query, box)
  fn = jax.jit(lambda *a: enc.apply({"params": params}, *a))
  no_drop = jnp.zeros((3,), bool)
  return dict(
      params=params,
      base=fn(before, after, query, box, no_drop),
      dropped=fn(before, after, query, box, jnp.array([False, True, False])),
      other_query=fn(before, after, -query, box, no_drop),
      swapped_roles=fn(after, before, query, box, no_drop),
      swapped_examples=fn(before[:, ::-1], after[:, ::-1], query, box, no_drop),
      other_box=fn(before, after, query, box[::-1], no_drop),
      other_row0=fn(before.at[0].set(0.0), after, query, box, no_drop))


def test_token_layout(encoded):
  # (2K + 1) images x (8 / 4)^2 patches + 1 box token, at the mixer's width.
  assert encoded["base"].shape == (3, 5 * 4 + 1, 24)
  assert encoded["base"].dtype == jnp.float32


def _changed(a, b, rows=slice(None)):
  return float(np.abs(np.asarray(a[rows]) - np.asarray(b[rows])).max()) > 1e-4


def test_prompt_content_roles_and_order_matter(encoded):
  assert _changed(encoded["base"], encoded["other_query"])
  assert _changed(encoded["base"], encoded["swapped_roles"]), "roles are not distinguished"
  assert _changed(encoded["base"], encoded["swapped_examples"]), "example index unused"
  # Rows do not mix: changing row 0's examples leaves rows 1, 2 as they were.
  assert _changed(encoded["base"], encoded["other_row0"], 0)
  assert not _changed(encoded["base"], encoded["other_row0"], slice(1, None))


def test_boxes_change_the_prompt_tokens(encoded):
  # Rows 0 and 2 swap boxes (row 1 keeps its own): they change, row 1 does not.
  assert _changed(encoded["base"], encoded["other_box"], 0)
  assert _changed(encoded["base"], encoded["other_box"], 2)
  assert not _changed(encoded["base"], encoded["other_box"], 1)


def test_dropped_prompts_are_the_null_tokens(encoded):
  null = np.asarray(encoded["params"]["null_token"])
  dropped = np.asarray(encoded["dropped"])
  np.testing.assert_array_equal(dropped[1], np.broadcast_to(null, dropped[1].shape))
  np.testing.assert_array_equal(dropped[[0, 2]], np.asarray(encoded["base"])[[0, 2]])
  enc = _encoder()
  null_tokens = enc.apply({"params": encoded["params"]}, 2, 7, method=pe.PromptEncoder.null_tokens)
  np.testing.assert_array_equal(np.asarray(null_tokens), np.broadcast_to(null, (2, 7, 24)))


def test_box_drop_in_training_uses_the_whole_image_box():
  before, after, query, box = _prompt(b=3, k=1)
  enc_train = _encoder(box_drop_rate=1.0)
  params = random_params(enc_train, before, after, query, box)
  fn = jax.jit(lambda box, train: enc_train.apply(
      {"params": params}, before, after, query, box, None, not train,
      rngs={"dropout": jax.random.key(1)}), static_argnums=1)
  whole = jnp.tile(jnp.asarray(pe.WHOLE_IMAGE_BOX), (3, 1))
  np.testing.assert_allclose(fn(box, True), fn(whole, False), rtol=1e-6, atol=1e-6)
  drop = pe.drop_boxes(box, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(np.asarray(drop), np.asarray(box))


def test_resize_to_image_size_and_errors():
  before, after, query, box = _prompt(b=1, k=1, tile=6)
  enc = _encoder(image_size=8)
  out = jax.eval_shape(lambda: enc.init_with_output(jax.random.key(0), before, after, query,
                                                    box)[0])
  assert out.shape == (1, 3 * 4 + 1, 24)
  with pytest.raises(ValueError, match="not divisible by patch size"):
    jax.eval_shape(lambda: _encoder().init(jax.random.key(0), before, after, query, box))
  before4, after4, query4, box4 = _prompt(b=1, k=4)
  with pytest.raises(ValueError, match="max_examples"):
    jax.eval_shape(lambda: _encoder().init(jax.random.key(0), before4, after4, query4, box4))


class _CountTokens(nn.Module):
  """Extra tokens for the test: one per example pair, from the pair's mean difference."""
  width: int

  @nn.compact
  def __call__(self, before, after, query):
    del query
    return nn.Dense(self.width, name="fc")((after - before).mean(axis=(2, 3)))


def test_extra_tokens_join_before_the_box_token_and_reach_the_output():
  enc = _encoder(extra_tokens=_CountTokens(24))
  before, after, query, box = _prompt(b=2, k=2)
  params = random_params(enc, before, after, query, box)
  assert params["extra_tokens"]["fc"]["kernel"].shape == (3, 24)
  fn = jax.jit(lambda *a: enc.apply({"params": params}, *a))
  base = fn(before, after, query, box)
  assert base.shape == (2, 5 * 4 + 2 + 1, 24)  # image tokens, 2 extra tokens, the box token
  # A change the extra tokens see (the pairs' mean difference) changes every output token.
  changed = fn(before, after + 0.5, query, box)
  assert np.abs(np.asarray(changed - base)).max() > 1e-3
