"""The ceiling of a task (metrics/ceiling.py, data/lookalikes.py, benchmarks/ceiling.py): 1 where
the target follows from the pixels, below 1 where it does not, deterministic, and the benchmark
prints one JSON line per task and a summary last."""
import json

import numpy as np
import pytest

from benchmarks import ceiling as ceiling_benchmark
from imagebrush_jax.data import lookalikes
from imagebrush_jax.data import scenes
from imagebrush_jax.data import tasks
from imagebrush_jax.metrics import ceiling

PARAMS = scenes.SceneParams()


def test_lookalikes_render_alike_and_differ_from_the_scene():
  """Lookalikes are other scenes the sampler could draw, with the same pixels in the window."""
  scene = scenes.sample_scene(np.random.default_rng([5, 1]), PARAMS)
  found = lookalikes.lookalike_scenes(scene, PARAMS, 18, rng=np.random.default_rng(0), num=12,
                                      margin=1)
  assert len(found) == 12
  window = lookalikes.window_mask(18, 1)
  truth = scenes.render(scene, 18)[window]
  for other in found:
    assert other != scene and lookalikes.in_prior(other, PARAMS)
    np.testing.assert_array_equal(scenes.render(other, 18)[window], truth)
  centers = np.array([[o.center for o in s.objects] for s in found])
  assert np.ptp(centers, axis=0).max() > 0  # they do move things about


@pytest.mark.parametrize("name", ["invert", "hflip"])
def test_a_task_of_the_pixels_has_ceiling_one(name):
  first, again = (list(ceiling.task_ceilings([name], PARAMS, 16, num_scenes=6, seed=3,
                                             margin=1, num_lookalikes=8))[0]
                  for _ in range(2))
  assert first == again  # deterministic given the seed
  assert first.scenes == 6 and first.rate == 1.0 and first.determined == 6
  assert first.lookalikes > 4 and first.unsampled == 0


def _paint_by_phase(scene: scenes.Scene, tile_size: int):
  """The largest object red or blue, by where within a pixel its centre lies: which its pixels
  do not show, and the two colours are no success against each other."""
  i = scenes.largest_index(scene)
  phase = (scene.objects[i].center[0] + 1) / 2 * tile_size % 1
  color = scenes.RED if phase < 0.5 else (0, 0, 255)
  return scenes.replace_object(scene, i, color=color), None


def test_an_ambiguous_task_has_ceiling_below_one():
  task = tasks.Task("paint_by_phase", _paint_by_phase, None, True, tasks.CROP_ANY, "")
  result, = ceiling.task_ceilings([task], PARAMS, 16, num_scenes=30, seed=0, num_lookalikes=12)
  assert result.task == "paint_by_phase" and result.scenes == 30
  assert result.rate < 0.9 and result.determined < result.scenes
  assert result.as_dict()["high"] < 1.0 and result.hedged < result.scenes


def test_best_guess_takes_what_most_lookalikes_accept():
  query = np.zeros((4, 4, 3), np.uint8)
  a, b = query.copy(), query.copy()
  a[:, :2] = 200
  b[:, 2:] = 200
  assert np.array_equal(ceiling.best_guess(query, np.stack([a, b, b])), b)
  assert np.array_equal(ceiling.best_guess(query, np.stack([a, a, b])), a)
  # Each candidate succeeds against itself only, so the matrix is the identity.
  np.testing.assert_array_equal(ceiling.success_matrix(np.stack([a, b]), query,
                                                       np.stack([a, b])), np.eye(2))
  # Painting both changes succeeds against either: edit success looks only where I' changes.
  hedge = ceiling.hedged_guess(query, np.stack([a, b, b]))
  assert (hedge == 200).all()
  np.testing.assert_array_equal(ceiling.success_matrix(hedge[None], query, np.stack([a, b])),
                                [[1, 1]])


def test_benchmark_prints_a_line_per_task_and_a_summary(capsys):
  status = ceiling_benchmark.main(["--num_scenes=3", "--tasks=invert,move", "--tile_size=16",
                                   "--lookalikes=4", "--proposals=64"])
  assert status == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [line["task"] for line in lines[:-1]] == ["invert", "move"]
  for line in lines[:-1]:
    assert 0 <= line["low"] <= line["ceiling"] <= line["high"] <= 1
    assert line["scenes"] == 3
  summary = lines[-1]
  assert summary["benchmark"] == "ceiling" and summary["tile_size"] == 16
  assert summary["render_size"] == 18  # objects.py's crop_scale 1.125: a pixel each side
  assert summary["ceiling"] == {line["task"]: line["ceiling"] for line in lines[:-1]}


def test_benchmark_refuses_an_unknown_task(capsys):
  with pytest.raises(SystemExit) as exit_info:
    ceiling_benchmark.main(["--tasks=sepia"])
  assert exit_info.value.code == 2
  assert "unknown task 'sepia'" in capsys.readouterr().err
