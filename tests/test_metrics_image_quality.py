"""Edit success: the made edits count, and copies, constant or blurred outputs earn nothing."""
import numpy as np

from imagebrush_jax.data import tasks as tasks_lib
from imagebrush_jax.metrics import image_quality


def _queries(n=16, size=16):
  return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_edit_success_rewards_the_edit_and_nothing_degenerate():
  query = _queries()
  for task in ("hflip", "invert", "rot90"):
    truth = np.stack([tasks_lib.apply_global_task(task, q) for q in query])
    success = lambda g: image_quality.edit_success(g, query, truth)  # pylint: disable=cell-var-from-loop
    np.testing.assert_array_equal(success(truth), 1.0)
    np.testing.assert_array_equal(success(query), 0.0)  # the copy baseline
    np.testing.assert_array_equal(success(np.full_like(query, 128)), 0.0)  # constant grey
    mean = ((query.astype(np.float64) + truth) / 2).round().astype(np.uint8)
    np.testing.assert_array_equal(success(mean), 0.0)  # halfway between I and I'
    # A noisy but clear edit still counts.
    noisy = np.clip(truth + np.random.default_rng(1).normal(0, 20, truth.shape), 0, 255)
    np.testing.assert_array_equal(success(noisy.astype(np.uint8)), 1.0)


def test_edit_success_is_undefined_where_nothing_changes():
  query = _queries(2)
  truth = query.copy()
  truth[1, :4] = 255 - truth[1, :4]  # only the second image has an edit, in its top rows
  out = image_quality.edit_success(truth, query, truth)
  assert np.isnan(out[0]) and out[1] == 1.0


def test_preservation_measures_what_the_edit_must_keep():
  rng = np.random.default_rng(3)
  query = rng.integers(0, 100, (2, 8, 8, 3), dtype=np.uint8)  # inverted: > 55 levels away
  truth = query.copy()
  truth[:, :2, :2] = 255 - truth[:, :2, :2]  # a local edit of the top-left corner
  assert np.all(image_quality.preservation(truth, query, truth) == 100.0)
  noisy = truth.copy()
  noisy[:, 4:, 4:] = 255 - noisy[:, 4:, 4:]  # damage outside the edit
  kept = image_quality.preservation(noisy, query, truth)
  assert np.all(kept < 15.0)
  everywhere = 255 - query  # an edit of every pixel leaves nothing to keep
  assert np.all(np.isnan(image_quality.preservation(everywhere, query, everywhere)))
