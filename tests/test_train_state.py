"""The optimizer and the train step: weight decay on kernels only (by parameter name, on the
real model's tree), a first learning rate above zero, and gradient accumulation that gives
the full batch's update."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny_test
from imagebrush_jax.infra import parallel
from imagebrush_jax.training import train_state
from imagebrush_jax.training.options import TrainOptions
from imagebrush_jax.core import build as build_lib


def _names(tree) -> dict[str, bool]:
  return {parallel.path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_weight_decay_only_on_kernels_of_the_real_model():
  config = tiny_test.get_config()
  shapes = build_lib.param_shapes(build_lib.build_model(config), config)
  mask = _names(train_state._decay_mask(shapes))  # pylint: disable=protected-access
  undecayed = {"prompt_encoder/vit/pos_embed", "prompt_encoder/role_embed/embedding",
               "prompt_encoder/index_embed/embedding", "prompt_encoder/null_token"}
  assert undecayed <= set(mask)  # the 2-D position embedding and tables are in the tree ...
  assert not any(mask[name] for name in undecayed)  # ... and not decayed
  for name, decayed in mask.items():
    leaf = name.rsplit("/", 1)[-1]
    assert decayed == (leaf == "kernel"), name
  assert sum(mask.values()) > 50  # every Dense / Conv kernel

  # The optimizer itself: with zero gradients only the decay moves parameters, so exactly
  # the kernels change at the first step (which also needs a learning rate above zero).
  optimizer, _ = train_state.make_optimizer(TrainOptions.from_config(config.train))

  @jax.jit
  def first_update_moves():
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    return jax.tree.map(lambda u: jnp.any(u != 0), updates)

  moved = _names(jax.tree.map(bool, first_update_moves()))
  assert moved == mask


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_first_learning_rate_is_not_zero(schedule, warmup):
  tc = tiny_test.get_config().train
  tc.lr_schedule, tc.warmup_steps, tc.num_steps, tc.learning_rate = schedule, warmup, 40, 1e-3
  lr = train_state.make_lr_schedule(TrainOptions.from_config(tc))
  rates = np.array([float(lr(s)) for s in range(40)])
  if warmup:
    # Update s gets (s + 1) / warmup of the peak: the first is not wasted, the peak is reached
    # at update `warmup` (index warmup - 1).
    np.testing.assert_allclose(rates[:warmup], 1e-3 * np.arange(1, warmup + 1) / warmup,
                               rtol=1e-6)
  else:  # no warmup: the first update is at (or, with cosine, just below) the peak
    assert 0.99e-3 <= rates[0] <= 1.000001e-3
  np.testing.assert_allclose(rates[max(warmup - 1, 0)], 1e-3, rtol=0.01)
  if schedule == "constant":
    np.testing.assert_allclose(rates[warmup:], 1e-3, rtol=1e-6)
  else:  # decays to the end value at the last update
    assert np.all(np.diff(rates[warmup:]) <= 0)
    np.testing.assert_allclose(rates[-1], 1e-3 * tc.end_lr_fraction, rtol=1e-5)


def mlp_init(rng) -> dict:
  """A two-layer network's parameters (6 -> 16 -> 3): a train step that compiles in seconds."""
  k1, k2 = jax.random.split(rng)
  return {"hidden": {"kernel": jax.random.normal(k1, (6, 16)), "bias": jnp.zeros((16,))},
          "out": {"kernel": jax.random.normal(k2, (16, 3)) / 4, "bias": jnp.zeros((3,))}}


def mlp_error(params, batch):
  """The network's output minus batch["y"] for inputs batch["x"]."""
  h = jnp.tanh(batch["x"] @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return h @ params["out"]["kernel"] + params["out"]["bias"] - batch["y"]


def _small_task(accum: int) -> train_state.Trainable:
  """A two-layer network whose loss ignores the rng: micro-batches see the same function."""
  tc = tiny_test.get_config().train
  tc.grad_accum_steps = accum
  tc.learning_rate = 1e-2
  def loss_fn(params, batch, rng, train):
    del rng, train
    err = mlp_error(params, batch)
    return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

  return train_state.make_trainable(train_state.Objective(init_params=mlp_init, loss_fn=loss_fn),
                                    TrainOptions.from_config(tc), seed=0)


def test_four_micro_batches_give_the_full_batch_update():
  rng = np.random.default_rng(0)
  batches = [{"x": rng.normal(size=(8, 6)).astype(np.float32),
              "y": rng.normal(size=(8, 3)).astype(np.float32)} for _ in range(3)]
  results = {}
  for accum in (1, 4):
    task = _small_task(accum)
    step = jax.jit(train_state.make_train_step(task))
    state = task.init_state(jax.random.key(0))
    metrics = []
    for batch in batches:
      state, m = step(state, batch)
      metrics.append(jax.device_get(m))
    results[accum] = state, metrics
  (full, full_metrics), (micro, micro_metrics) = results[1], results[4]
  for key in ("loss", "mae", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in micro_metrics],
                               [m[key] for m in full_metrics], rtol=1e-5, err_msg=key)
  assert int(micro["step"]) == 3
  for tree in ("params", "ema_params", "opt_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), micro[tree],
                 full[tree])
  # The updates were real: parameters moved well beyond the tolerance.
  start = _small_task(1).objective.init_params(jax.random.key(0))
  moved = optax.global_norm(jax.tree.map(jnp.subtract, full["params"], start))
  assert float(moved) > 1e-2
