"""DDIM: timesteps, one step vs NumPy, exact recovery, guidance, the jitted vs a Python loop."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagebrush_jax.diffusion import ddim
from imagebrush_jax.diffusion import schedules

H, W, C = 8, 4, 3  # a 2x1-cell grid of 4x4 cells; the bottom cell is generated


def _schedule(prediction_type="epsilon", name="scaled_linear"):
  return schedules.make_schedule(ml_collections.ConfigDict(dict(
      schedule=name, num_timesteps=1000, beta_start=0.00085, beta_end=0.012,
      prediction_type=prediction_type)))


def _grid(b=2, seed=0):
  rng = np.random.default_rng(seed)
  x_star = jnp.asarray(rng.uniform(-1, 1, (b, H, W, C)), jnp.float32)
  mask = jnp.zeros((b, H, W, 1)).at[:, H // 2:].set(1.0)
  return x_star, mask


def _np_step(out, x_t, a_t, a_prev, eta, noise, prediction_type, clip=False):
  """The DDIM update in NumPy, float64, straight from the paper's eq. 12."""
  out, x_t, noise = (np.asarray(v, np.float64) for v in (out, x_t, noise))
  if prediction_type == "epsilon":
    eps = out
    x0 = (x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
  else:
    x0 = np.sqrt(a_t) * x_t - np.sqrt(1 - a_t) * out
    eps = np.sqrt(1 - a_t) * x_t + np.sqrt(a_t) * out
  if clip:
    x0 = np.clip(x0, -1, 1)
    eps = (x_t - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
  sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
  return np.sqrt(a_prev) * x0 + np.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps + sigma * noise


def test_timestep_spacings():
  np.testing.assert_array_equal(ddim.ddim_timesteps(1000, 4, "leading"), [750, 500, 250, 0])
  np.testing.assert_array_equal(ddim.ddim_timesteps(1000, 4, "trailing"), [999, 749, 499, 249])
  np.testing.assert_array_equal(ddim.ddim_timesteps(1000, 4, "linspace"), [999, 666, 333, 0])
  assert len(set(ddim.ddim_timesteps(1000, 50, "trailing"))) == 50
  with pytest.raises(ValueError, match="spacing"):
    ddim.ddim_timesteps(1000, 4, "karras")
  with pytest.raises(ValueError, match="num_steps"):
    ddim.ddim_timesteps(10, 20, "leading")


@pytest.mark.parametrize("prediction_type,eta,clip", [
    ("epsilon", 0.0, False), ("epsilon", 0.7, False), ("v", 0.0, False), ("v", 1.0, True),
    ("epsilon", 0.3, True)])
def test_one_step_matches_numpy(prediction_type, eta, clip):
  rng = np.random.default_rng(1)
  out, x_t, noise = (rng.standard_normal((2, 4, 4, 3)).astype(np.float32) for _ in range(3))
  a_t, a_prev = 0.3, 0.6
  x_prev, _ = ddim.ddim_step(jnp.asarray(out), jnp.asarray(x_t), jnp.float32(a_t),
                             jnp.float32(a_prev), eta, jnp.asarray(noise),
                             prediction_type=prediction_type, clip_x0=clip)
  expected = _np_step(out, x_t, a_t, a_prev, eta, noise, prediction_type, clip)
  np.testing.assert_allclose(x_prev, expected, rtol=1e-5, atol=1e-5)


def _exact_predictor(prediction_type):
  """The model that knows x*: it outputs the exact epsilon (or v) of x_t w.r.t. x*."""

  def apply_fn(params, x_t, t, cond):
    del cond
    a = params["alphas"][t][:, None, None, None]
    x_star = jnp.concatenate([params["x_star"]] * (x_t.shape[0] // params["x_star"].shape[0]))
    eps = (x_t - jnp.sqrt(a) * x_star) / jnp.sqrt(1 - a)
    return eps if prediction_type == "epsilon" else jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x_star

  return apply_fn


@pytest.mark.parametrize("prediction_type,eta,spacing", [
    ("epsilon", 0.0, "trailing"), ("v", 1.0, "leading")])
def test_exact_predictor_recovers_the_data_point(prediction_type, eta, spacing):
  schedule = _schedule(prediction_type)
  x_star, mask = _grid()
  known = x_star * (1 - mask) + 0.5 * mask  # the target cell of the context holds no answer
  params = dict(x_star=x_star, alphas=schedule.alphas_cumprod)
  sample = ddim.ddim_sample(_exact_predictor(prediction_type), params, {}, jax.random.key(3),
                            schedule=schedule, known=known, mask=mask, num_steps=10, eta=eta,
                            spacing=spacing, uncond={}, guidance_scale=7.5)
  np.testing.assert_allclose(sample, x_star, atol=2e-4)


def _toy_apply(params, x_t, t, cond):
  """A nonlinear, timestep- and condition-dependent stand-in for the UNet."""
  return jnp.tanh(params["w"] * x_t + cond["c"]) * 0.5 + 1e-4 * t[:, None, None, None]


def _toy_inputs():
  x_star, mask = _grid()
  rng = np.random.default_rng(5)
  cond = dict(c=jnp.asarray(rng.standard_normal((2, H, W, C)), jnp.float32))
  uncond = dict(c=jnp.asarray(rng.standard_normal((2, H, W, C)), jnp.float32))
  return dict(w=jnp.float32(0.8)), cond, uncond, x_star, mask


def test_guidance_scale_one_equals_unguided():
  params, cond, uncond, known, mask = _toy_inputs()
  kw = dict(schedule=_schedule(), known=known, mask=mask, num_steps=6, eta=0.4)
  guided = ddim.ddim_sample(_toy_apply, params, cond, jax.random.key(0), uncond=uncond,
                            guidance_scale=1.0, **kw)
  plain = ddim.ddim_sample(_toy_apply, params, cond, jax.random.key(0), **kw)
  np.testing.assert_allclose(guided, plain, rtol=1e-5, atol=1e-5)
  stronger = ddim.ddim_sample(_toy_apply, params, cond, jax.random.key(0), uncond=uncond,
                              guidance_scale=3.0, **kw)
  assert float(jnp.abs(stronger - plain).max()) > 1e-3


def _reference_sample(apply_fn, params, cond, uncond, rng, schedule, known, mask, num_steps,
                      scale, eta, spacing, clip):
  """A plain Python loop over the steps, the update in NumPy (same random draws as the sampler)."""
  alphas = np.asarray(schedule.alphas_cumprod, np.float64)
  ts = ddim.ddim_timesteps(1000, num_steps, spacing)
  rng_init, rng_steps = jax.random.split(rng)
  z = np.asarray(jax.random.normal(rng_init, known.shape), np.float64)
  known, mask = np.asarray(known, np.float64), np.asarray(mask, np.float64)
  known_at = lambda a: np.sqrt(a) * known + np.sqrt(1 - a) * z
  x = mask * z + (1 - mask) * known_at(alphas[ts[0]])
  for i, t in enumerate(ts):
    a_t = alphas[t]
    a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else 1.0
    tb = jnp.full((known.shape[0],), t, jnp.int32)
    xj = jnp.asarray(x, jnp.float32)
    out_c = np.asarray(apply_fn(params, xj, tb, cond), np.float64)
    out_u = np.asarray(apply_fn(params, xj, tb, uncond), np.float64)
    out = out_u + scale * (out_c - out_u)
    noise = np.asarray(jax.random.normal(jax.random.fold_in(rng_steps, i), known.shape))
    x_prev = _np_step(out, x, a_t, a_prev, eta, noise, schedule.prediction_type, clip)
    x = mask * x_prev + (1 - mask) * known_at(a_prev)
  return x


@pytest.mark.parametrize("eta,spacing,clip", [(0.8, "linspace", True)])
def test_jitted_sampler_equals_python_loop(eta, spacing, clip):
  params, cond, uncond, known, mask = _toy_inputs()
  schedule = _schedule()
  out = ddim.ddim_sample(_toy_apply, params, cond, jax.random.key(7), uncond=uncond,
                         guidance_scale=2.5, schedule=schedule, known=known, mask=mask,
                         num_steps=5, eta=eta, spacing=spacing, clip_x0=clip)
  ref = _reference_sample(_toy_apply, params, cond, uncond, jax.random.key(7), schedule, known,
                          mask, 5, 2.5, eta, spacing, clip)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(out)[:, :H // 2], np.asarray(known)[:, :H // 2])


def test_deterministic_per_key_and_compiled_once():
  params, cond, uncond, known, mask = _toy_inputs()
  traces = []

  def counting_apply(params, x_t, t, cond):
    traces.append(x_t.shape)
    return _toy_apply(params, x_t, t, cond)

  kw = dict(schedule=_schedule(), known=known, mask=mask, num_steps=4, uncond=uncond)
  a = ddim.ddim_sample(counting_apply, params, cond, jax.random.key(1), guidance_scale=2.0,
                       eta=0.5, **kw)
  b = ddim.ddim_sample(counting_apply, params, cond, jax.random.key(1), guidance_scale=2.0,
                       eta=0.5, **kw)
  c = ddim.ddim_sample(counting_apply, params, cond, jax.random.key(2), guidance_scale=4.0,
                       eta=0.0, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.abs(a - c).max()) > 1e-3
  # One trace of the loop body, with the conditional and unconditional halves in one batch;
  # new keys, scales and etas reuse the compilation.
  assert traces == [(4, H, W, C)]
  ddim.ddim_sample(counting_apply, params, cond, jax.random.key(1), guidance_scale=2.0,
                   eta=0.5, **{**kw, "num_steps": 3})
  assert len(traces) == 2
