"""Schedules against their closed forms and diffusers'; forward process and parameterisations."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagebrush_jax.diffusion import gaussian
from imagebrush_jax.diffusion import schedules


def _config(name, **overrides):
  base = dict(schedule=name, num_timesteps=1000, beta_start=0.0001, beta_end=0.02,
              prediction_type="epsilon")
  return ml_collections.ConfigDict({**base, **overrides})


def test_linear_closed_form():
  s = schedules.make_schedule(_config("linear"))
  t = np.arange(1000)
  np.testing.assert_allclose(s.betas, 0.0001 + (0.02 - 0.0001) * t / 999, rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - (0.0001 + 0.0199 * t / 999)),
                             rtol=1e-5)


def test_scaled_linear_closed_form():
  s = schedules.make_schedule(_config("scaled_linear", beta_start=0.00085, beta_end=0.012))
  t = np.arange(1000)
  sqrt_b = np.sqrt(0.00085) + (np.sqrt(0.012) - np.sqrt(0.00085)) * t / 999
  np.testing.assert_allclose(s.betas, sqrt_b**2, rtol=1e-6)
  assert abs(float(s.alphas_cumprod[-1]) - 0.0047) < 1e-4  # Stable Diffusion's value


def test_cosine_closed_form():
  s = schedules.make_schedule(_config("cosine"))
  f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  t = np.arange(1000)
  unclipped = 1 - f(t + 1) / f(t) < 0.999
  np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped],
                             (f(t + 1) / f(0))[unclipped], rtol=1e-4, atol=1e-7)
  assert float(s.betas.max()) <= 0.999 + 1e-7
  assert s.num_timesteps == 1000


@pytest.mark.parametrize("name,diffusers_name", [
    ("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")])
def test_matches_diffusers(name, diffusers_name):
  """The betas and alphas_cumprod of diffusers' schedulers (its cosine is 'squaredcos_cap_v2').

  diffusers multiplies the cumulative product out in float32, ours in float64 (rounded once), so
  alphas_cumprod agree to its float32 drift, ~1e-6 relative.
  """
  pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                beta_schedule=diffusers_name)
  s = schedules.make_schedule(_config(name))
  np.testing.assert_allclose(s.betas, ref.betas.numpy(), rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=1e-9)


def test_errors_and_pytree():
  with pytest.raises(ValueError, match="diffusion.schedule"):
    schedules.make_schedule(_config("sigmoid"))
  with pytest.raises(ValueError, match="prediction_type"):
    schedules.make_schedule(_config("linear", prediction_type="x0"))
  s = schedules.make_schedule(_config("linear"))
  leaves, treedef = jax.tree.flatten(s)
  assert len(leaves) == 2 and jax.tree.unflatten(treedef, leaves).prediction_type == "epsilon"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "sample"])
def test_parameterisations_round_trip(prediction_type):
  s = schedules.make_schedule(_config("cosine"))
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 2)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((3, 4, 4, 2)), jnp.float32)
  t = jnp.array([0, 400, 999])
  x_t = gaussian.q_sample(s, x0, t, noise)
  a = np.asarray(s.alphas_cumprod)[[0, 400, 999]][:, None, None, None]
  np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-6)
  target = gaussian.prediction_target(prediction_type, x0, noise, jnp.asarray(a))
  if prediction_type == "v":
    np.testing.assert_allclose(target, np.sqrt(a) * noise - np.sqrt(1 - a) * x0, atol=1e-6)
  x0_hat, eps_hat = gaussian.x0_and_eps(prediction_type, target, x_t, jnp.asarray(a))
  # t = 999 of the cosine schedule has alpha ~ 0: x0 from epsilon is ill-conditioned there.
  np.testing.assert_allclose(x0_hat[:2], x0[:2], atol=2e-4)
  np.testing.assert_allclose(eps_hat, noise, atol=2e-4)
