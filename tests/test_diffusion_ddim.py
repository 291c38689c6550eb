"""DDIM: timesteps, one step vs NumPy, exact recovery, guidance, the jitted vs a Python loop, and
whole trajectories against diffusers' PyTorch DDIMScheduler."""
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
  elif prediction_type == "sample":
    x0 = out
    eps = (x_t - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
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
    ("epsilon", 0.3, True), ("sample", 0.5, True)])
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
    return {"epsilon": eps, "sample": x_star,
            "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x_star}[prediction_type]

  return apply_fn


@pytest.mark.parametrize("prediction_type,eta,spacing", [
    ("epsilon", 0.0, "trailing"), ("v", 1.0, "leading"), ("sample", 0.0, "trailing")])
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


def _sampler_noise(rng, shape, num_steps):
  """The float64 initial noise and per-step noises that ddim_sample draws from `rng`."""
  rng_init, rng_steps = jax.random.split(rng)
  z = np.asarray(jax.random.normal(rng_init, shape), np.float64)
  noises = [np.asarray(jax.random.normal(jax.random.fold_in(rng_steps, i), shape), np.float64)
            for i in range(num_steps)]
  return z, noises


def _reference_sample(apply_fn, params, cond, uncond, rng, schedule, known, mask, num_steps,
                      scale, eta, spacing, clip):
  """A plain Python loop over the steps, the update in NumPy (same random draws as the sampler)."""
  alphas = np.asarray(schedule.alphas_cumprod, np.float64)
  ts = ddim.ddim_timesteps(1000, num_steps, spacing)
  z, noises = _sampler_noise(rng, known.shape, num_steps)
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
    x_prev = _np_step(out, x, a_t, a_prev, eta, noises[i], schedule.prediction_type, clip)
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


# ------------------------------------------------------- against diffusers' PyTorch DDIMScheduler

DIFFUSERS_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                       "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION_TYPES = {"epsilon": "epsilon", "v": "v_prediction", "sample": "sample"}


def _diffusers():
  pytest.importorskip("torch")
  return pytest.importorskip("diffusers")


def _diffusers_scheduler(name, prediction_type, spacing, clip):
  """diffusers' DDIMScheduler configured to our semantics: no timestep offset ('leading' starts at
  0), the last step goes to alpha_bar = 1, clipping x0 to [-1, 1] (no dynamic thresholding)."""
  import torch
  scheduler = _diffusers().DDIMScheduler(
      num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
      beta_schedule=DIFFUSERS_SCHEDULES[name],
      prediction_type=DIFFUSERS_PREDICTION_TYPES[prediction_type], timestep_spacing=spacing,
      steps_offset=0, set_alpha_to_one=True, clip_sample=clip, clip_sample_range=1.0,
      thresholding=False)
  scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)  # its values, float64 math
  return scheduler


def _fake_model(xp, x, t, a, prediction_type):
  """A denoiser stand-in, one formula for NumPy, JAX and torch (`xp`); t, a broadcast against x.

  It guesses x0 = 1.5 tanh(x + sin(t / 97)) (past [-1, 1] in places, so clipping acts) and
  returns the epsilon, v or x0 that this implies at x, plus a term on which the
  parameterisations disagree.
  """
  g = 1.5 * xp.tanh(x + xp.sin(t / 97.0))
  eps = (x - xp.sqrt(a) * g) / xp.sqrt(1.0 - a) + 0.1 * xp.sqrt(a) * xp.cos(3.0 * x)
  if prediction_type == "sample":
    return g + 0.1 * xp.cos(3.0 * x)
  return eps if prediction_type == "epsilon" else xp.sqrt(a) * eps - xp.sqrt(1.0 - a) * g


_RECORDED = []


def _recording_apply(prediction_type):
  """The fake model as an ApplyFn for ddim_sample; it records each step's (t, x_t) on the host."""

  def apply_fn(params, x_t, t, cond):
    del cond
    jax.debug.callback(lambda t, x: _RECORDED.append((int(t[0]), np.asarray(x, np.float64))),
                       t, x_t)
    b = (slice(None), None, None, None)
    return _fake_model(jnp, x_t, t[b], params["alphas"][t][b], prediction_type)

  return apply_fn


_RECORDING_APPLY = {p: _recording_apply(p) for p in DIFFUSERS_PREDICTION_TYPES}  # compiled once
SAMPLER_CASES = (("leading", "epsilon"), ("trailing", "v"))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers(spacing):
  scheduler = _diffusers().DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing,
                                         steps_offset=0)
  for n in (1, 3, 7, 10, 50, 999, 1000):
    scheduler.set_timesteps(n)
    np.testing.assert_array_equal(ddim.ddim_timesteps(1000, n, spacing), scheduler.timesteps)


def test_trailing_timesteps_are_n_steps_for_every_n():
  """N distinct timesteps in [0, T - 1] from T - 1 down, for every N; diffusers' where it has N
  (for some N, np.arange's float step gives diffusers an extra t = -1, which is left out)."""
  scheduler = _diffusers().DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing",
                                         steps_offset=0)
  extra = 0
  for n in range(1, 1001):
    ts = ddim.ddim_timesteps(1000, n, "trailing")
    assert len(ts) == n and ts[0] == 999 and ts.min() >= 0 and np.all(np.diff(ts) < 0), n
    scheduler.set_timesteps(n)
    want = scheduler.timesteps.numpy()
    if len(want) == n + 1 and want[-1] == -1:
      extra += 1
      want = want[:n]
    np.testing.assert_array_equal(ts, want, err_msg=f"N = {n}")
  assert extra > 0  # the comparison covers the N where diffusers overshoots


@pytest.mark.parametrize("prediction_type", ["epsilon", "v", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_trajectory_matches_diffusers(name, spacing, prediction_type):
  """Every x_t of a 10-step run equals diffusers' DDIMScheduler.step's, for eta 0 and 1 (the same
  noise, as variance_noise) and with and without clipping.

  Our clip_x0 recomputes epsilon from the clipped x0, which is diffusers' clip_sample with
  use_clipped_model_output=True. diffusers steps from t to t - T // N, ours to the next visited
  timestep: the same here, since N divides T (see ddim.ddim_alphas). diffusers keeps its own
  float32 alphas_cumprod, so schedules are compared too. Our update is checked in float64
  (ddim_step under x64), and the jitted float32 sampler as used, step by step, both to 1e-5. The
  sampler, compiled per (prediction type, spacing, clip), runs for two of those: epsilon with
  'leading' and v with 'trailing', clipped. ('trailing' epsilon starts at t = 999, where the
  cosine schedule's alpha_bar ~ 2e-9 and x0 = (x - sqrt(1 - a) eps) / sqrt(a) loses ~1e-3 to
  float32 rounding in any float32 implementation.)
  """
  import torch
  num_steps, shape = 10, (2, 4, 4, 3)
  schedule = _schedule(prediction_type, name)
  table = np.asarray(schedule.alphas_cumprod, np.float64)  # the fake model's (fixed) alphas
  ts, alpha_t, alpha_prev = (np.asarray(v) for v in ddim.ddim_alphas(schedule, num_steps,
                                                                      spacing))
  rng = jax.random.key(11)
  z, noises = _sampler_noise(rng, shape, num_steps)
  for eta in (0.0, 1.0):
    for clip in (False, True):
      scheduler = _diffusers_scheduler(name, prediction_type, spacing, clip)
      scheduler.set_timesteps(num_steps)
      np.testing.assert_array_equal(ts, scheduler.timesteps)
      ref = [torch.from_numpy(z)]
      for i, t in enumerate(ts.tolist()):
        out = _fake_model(torch, ref[-1], torch.tensor(float(t), dtype=torch.float64),
                          torch.tensor(table[t]), prediction_type)
        ref.append(scheduler.step(out, t, ref[-1], eta=eta, use_clipped_model_output=clip,
                                  variance_noise=torch.from_numpy(noises[i])).prev_sample)
      ref = np.stack([x.numpy() for x in ref])
      assert ref.dtype == np.float64

      ours = [z]
      with jax.enable_x64(True):
        for i, t in enumerate(ts.tolist()):
          out = _fake_model(np, ours[-1], float(t), table[t], prediction_type)
          x_prev, _ = ddim.ddim_step(
              jnp.asarray(out), jnp.asarray(ours[-1]), np.float64(alpha_t[i]),
              np.float64(alpha_prev[i]), eta, jnp.asarray(noises[i]),
              prediction_type=prediction_type, clip_x0=clip)
          ours.append(np.asarray(x_prev))
      ours = np.stack(ours)
      assert ours.dtype == np.float64
      np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5, err_msg=f"eta={eta} clip={clip}")

      if not clip or (spacing, prediction_type) not in SAMPLER_CASES:
        continue
      _RECORDED.clear()
      final = ddim.ddim_sample(
          _RECORDING_APPLY[prediction_type], dict(alphas=schedule.alphas_cumprod), {}, rng,
          schedule=schedule, known=jnp.zeros(shape), mask=jnp.ones(shape[:-1] + (1,)),
          num_steps=num_steps, eta=eta, spacing=spacing, clip_x0=clip)
      jax.effects_barrier()
      recorded = sorted(_RECORDED, key=lambda r: -r[0])
      assert [r[0] for r in recorded] == ts.tolist()
      sampled = np.stack([x for _, x in recorded] + [np.asarray(final, np.float64)])
      np.testing.assert_allclose(sampled, ref, rtol=0, atol=1e-5, err_msg=f"eta={eta} clip={clip}")
