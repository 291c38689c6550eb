"""Prompt encoder: token layout, roles, boxes, null tokens, box dropping, resizing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagebrush_jax.models import prompt_encoder as pe


def random_params(module, *args, seed=0):
  """Non-degenerate parameters from shapes alone (no init compilation)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "scale":
      return jnp.asarray(1.0 + 0.1 * n)
    if path[-1].key == "kernel":
      return jnp.asarray(n / np.sqrt(max(np.prod(leaf.shape[:-1]), 1)))
    return jnp.asarray(0.5 * n)

  return jax.tree_util.tree_map_with_path(fill, shapes)


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


def test_paired_prompt_images_stack_each_pair_on_channels():
  before, after, query, _ = _prompt(b=2, k=2, tile=4)
  images, roles = pe.prompt_images(before, after, query, "concat")
  assert images.shape == (2, 3, 4, 4, 6) and roles == [pe.ROLE_BEFORE] * 2 + [pe.ROLE_QUERY]
  np.testing.assert_array_equal(images[:, :2, ..., :3], before)
  np.testing.assert_array_equal(images[:, :2, ..., 3:], after)
  np.testing.assert_array_equal(images[:, 2, ..., :3], query)
  assert not np.asarray(images[:, 2, ..., 3:]).any()  # the query's missing channels are zero

  images, roles = pe.prompt_images(before, after, query, "concat_dihedral")
  assert images.shape == (2, 3, 4, 4, 27)
  np.testing.assert_array_equal(images[:, :2, ..., :3], after)
  np.testing.assert_array_equal(images[:, :2, ..., 3:6], before)
  np.testing.assert_array_equal(images[:, :2, ..., 6:9], before[:, :, :, ::-1])  # hflip(E)
  assert not np.asarray(images[:, 2, ..., 3:]).any()

  images, roles = pe.prompt_images(before, after, query, "separate")
  assert images.shape == (2, 5, 4, 4, 3) and roles == [0, 0, 1, 1, 2]
  with pytest.raises(ValueError, match="model.prompt.pair_input"):
    pe.prompt_images(before, after, query, "stacked")


@pytest.mark.parametrize("pair_input", ["concat", "concat_dihedral"])
def test_paired_encoder_tokens_see_both_images_of_a_pair(pair_input):
  enc = _encoder(pair_input=pair_input)
  before, after, query, box = _prompt(b=2, k=2)
  params = random_params(enc, before, after, query, box)
  fn = jax.jit(lambda *a: enc.apply({"params": params}, *a))
  base = fn(before, after, query, box)
  assert base.shape == (2, 3 * 4 + 1, 24)  # (K + 1) images of 4 patches, and the box token
  for changed in (fn(before.at[:, 1].multiply(-1), after, query, box),
                  fn(before, after.at[:, 1].multiply(-1), query, box),
                  fn(before, after, -query, box)):
    assert np.abs(np.asarray(changed - base)).max() > 1e-3


def test_pair_statistics_find_the_view_and_colour_map_of_an_edit():
  rng = np.random.default_rng(1)
  before = rng.uniform(-1, 1, (2, 1, 16, 16, 3)).astype(np.float32)
  # E' = vflip(E) with red and blue swapped, then inverted: view 2 (up-down flip) correlates
  # with E' as minus the red/blue permutation; every other view barely correlates.
  after = -before[:, :, ::-1, :, ::-1]
  stats = np.asarray(pe.pair_statistics(jnp.asarray(before), jnp.asarray(after)))
  assert stats.shape == (2, 1, 8 * 9 + 12)
  corr = stats[..., :72].reshape(2, 1, 8, 3, 3)
  swap = np.eye(3, dtype=bool)[::-1]  # the red/blue permutation
  np.testing.assert_allclose(corr[:, 0, 2][:, swap], -1.0, atol=1e-3)
  assert np.abs(corr[:, 0, 2][:, ~swap]).max() < 0.3  # independent random channels
  others = np.delete(corr, 2, axis=2)
  assert np.abs(others).max() < 0.5
  np.testing.assert_allclose(stats[..., 72:75], before.mean(axis=(2, 3)), atol=1e-6)
  np.testing.assert_allclose(stats[..., 78:81], after.mean(axis=(2, 3)), atol=1e-6)


def test_pair_stats_token_follows_the_image_tokens():
  enc = _encoder(pair_input="concat", pair_stats=True)
  before, after, query, box = _prompt(b=2, k=2)
  params = random_params(enc, before, after, query, box)
  fn = jax.jit(lambda *a: enc.apply({"params": params}, *a))
  base = fn(before, after, query, box)
  assert base.shape == (2, 3 * 4 + 2 + 1, 24)  # (K + 1) images x 4 patches, K stats, the box
  assert params["stats_fc1"]["kernel"].shape == (84, 24)
  # Flipping E'_1 keeps its pixels but not its correlation with E_1: the tokens change.
  assert np.abs(np.asarray(fn(before, after.at[:, 1].set(after[:, 1, :, ::-1]), query, box)
                           - base)).max() > 1e-3
